"""torch.compile (Inductor on the CPU) trains every encoding as eager mode does, across batch
shapes, with one dynamic graph instead of one per shape."""

from __future__ import annotations

import os

import pytest
import torch

from nmt.config import compose
from nmt.model import build_model
from nmt.objective import batch_loss
from nmt.presets import training_presets

VOCAB = 40
# (batch, source length, target length): the second shape makes torch.compile mark the
# dimensions dynamic; the third must then run without another compilation.
SHAPES = ((4, 7, 9), (3, 11, 6), (5, 5, 13))


def batches():
    torch.manual_seed(1)
    out = []
    for b, s, t in SHAPES:
        src = torch.randint(4, VOCAB, (b, s))
        tgt = torch.randint(4, VOCAB, (b, t + 1))
        src[0, -2:] = 0  # padding, as real batches have
        tgt[0, -3:] = 0
        out.append(type("Batch", (), {"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}))
    return out


def losses_and_grads(model, forward, precision: str) -> list[tuple[float, torch.Tensor]]:
    out = []
    for batch in batches():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = batch_loss(forward, model.output_weight, batch, 0.1, 16)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
        out.append((loss.item(), grads))
    return out


# Compiling takes 30-90 s a preset on a 2-core CPU: CI compiles two that cover the index
# arithmetic (Shaw's buckets under sinusoids, T5's log buckets); NMT_TEST_COMPILE_ALL=1 all.
IN_CI = ("combined", "t5")


def compile_cases() -> list:
    every = os.environ.get("NMT_TEST_COMPILE_ALL") == "1"
    skip = pytest.mark.skip(reason="compiles in 30-90 s; NMT_TEST_COMPILE_ALL=1 runs it")
    return [
        pytest.param(name, marks=() if every or name in IN_CI else skip)
        for name in training_presets()
    ]


@pytest.mark.slow
@pytest.mark.parametrize("encoding", compile_cases())
def test_compiled_training_equals_eager(encoding: str) -> None:
    torch._dynamo.reset()
    cfg = compose(["model=tiny", f"encoding={encoding}", "model.dropout=0"])
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB).train()
    eager = losses_and_grads(model, model, "fp32")
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = torch.compile(model)
    got = losses_and_grads(model, compiled, "fp32")
    for (want_loss, want_grad), (loss, grad) in zip(eager, got, strict=True):
        assert loss == pytest.approx(want_loss, rel=1e-4)
        torch.testing.assert_close(grad, want_grad, rtol=1e-3, atol=1e-4)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    assert graphs <= 2, f"{graphs} graphs for {len(SHAPES)} batch shapes"
