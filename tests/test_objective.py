"""The training loss: label smoothing from its definition, and the chunked projected loss
(gradients computed in the forward pass) equal to the plain one."""

from __future__ import annotations

import math

import pytest
import torch

from nmt.config import compose
from nmt.data import EOS, PAD, EncodedSplit, RaggedIds, collate
from nmt.model import build_model
from nmt.objective import (
    batch_loss,
    build_optimization,
    label_smoothed_loss,
    load_optimizer_state,
    projected_label_smoothed_loss,
)
from nmt.presets import training_presets


def test_label_smoothing_follows_its_definition() -> None:
    """(1 - eps) * NLL + eps * the mean over the vocabulary of -log p, padding left out."""
    logits = torch.tensor([[[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]]])
    target = torch.tensor([[2, PAD]])
    loss, nll = label_smoothed_loss(logits, target, eps=0.1)
    log_p = [x - math.log(sum(math.exp(v) for v in logits[0, 0])) for x in logits[0, 0]]
    want_nll = -float(log_p[2])
    assert nll.item() == pytest.approx(want_nll, rel=1e-6)
    want = 0.9 * want_nll + 0.1 * -sum(float(x) for x in log_p) / 4
    assert loss.item() == pytest.approx(want, rel=1e-6)


def random_problem(dtype=torch.float64, rows=(3, 7), d=16, vocab=50):
    torch.manual_seed(0)
    states = torch.randn(*rows, d, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, d, dtype=dtype, requires_grad=True)
    target = torch.randint(1, vocab, rows)
    target[0, 4:] = PAD  # a padded row: no loss, no gradient
    return states, weight, target


def loss_and_grads(fn, states, weight, target):
    loss, nll = fn(states, weight, target)
    (0.37 * loss).backward()  # a scale, as the trainer divides by the step's tokens
    grads = states.grad.clone(), weight.grad.clone()
    states.grad = weight.grad = None
    return loss.detach(), nll, grads


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_projected_loss_equals_the_loss_of_the_logits(chunk: int) -> None:
    states, weight, target = random_problem()

    def plain(s, w, t):
        return label_smoothed_loss(s @ w.t(), t, 0.1)

    def projected(s, w, t):
        return projected_label_smoothed_loss(s, w, t, 0.1, chunk)

    want = loss_and_grads(plain, states, weight, target)
    got = loss_and_grads(projected, states, weight, target)
    assert got[0].item() == pytest.approx(want[0].item(), rel=1e-6)
    assert got[1].item() == pytest.approx(want[1].item(), rel=1e-6)
    for g, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert states.grad is None and got[2][0][0, 4:].abs().max() == 0  # padding: no gradient


def test_projected_loss_under_bf16_autocast_projects_in_bf16() -> None:
    """The logits are rounded to bf16 as the autocast matmul's are: the same loss."""
    states, weight, target = random_problem(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = label_smoothed_loss(states @ weight.t(), target, 0.1)[0]
        got = projected_label_smoothed_loss(states, weight, target, 0.1, 4)[0]
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    fp32 = label_smoothed_loss(states @ weight.t(), target, 0.1)[0]
    assert got.item() != fp32.item()  # not vacuous: the fp32 projection differs


def test_a_chunk_below_one_is_refused() -> None:
    states, weight, target = random_problem()
    with pytest.raises(ValueError, match="chunk_rows=0"):
        projected_label_smoothed_loss(states, weight, target, 0.1, 0)


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        # The key projection's bias has a gradient of rounding noise (softmax ignores a
        # constant per query), which Adam's division by sqrt(v) + 1e-9 amplifies.
        if p.grad.abs().max() > 1e-6:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_fused_adam_steps_as_the_unfused_one_and_takes_over_its_state() -> None:
    """The trainer's Adam is torch's fused kernel on the CPU: the same updates as the
    per-parameter loop, and it resumes from a checkpoint the loop wrote."""
    cfg = compose(["model=tiny", "encoding=relative", "model.dropout=0.0"])
    torch.manual_seed(0)
    fused_model = build_model(cfg, 40)
    loop_model = build_model(cfg, 40)
    loop_model.load_state_dict(fused_model.state_dict())
    fused, _, _ = build_optimization(fused_model, cfg, torch.device("cpu"), "fp32")
    # The scheduler has already set the first step's learning rate in the fused group.
    settings = {
        k: v
        for k, v in fused.param_groups[0].items()
        if k in ("lr", "betas", "eps", "weight_decay")
    }
    loop = torch.optim.Adam(loop_model.parameters(), **{**settings, "foreach": False})
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    src, tgt = torch.randint(4, 40, (3, 7)), torch.randint(4, 40, (3, 6))

    def step(model, optimizer) -> None:
        optimizer.zero_grad()
        model(src, tgt).float().logsumexp(-1).mean().backward()
        optimizer.step()

    for _ in range(3):
        step(fused_model, fused)
        step(loop_model, loop)
    assert_same_parameters(fused_model, loop_model)
    resumed, _, _ = build_optimization(loop_model, cfg, torch.device("cpu"), "fp32")
    load_optimizer_state(resumed, loop.state_dict())
    assert resumed.param_groups[0]["fused"]  # the loop's saved groups say fused=None
    step(loop_model, resumed)
    step(fused_model, fused)
    assert_same_parameters(fused_model, loop_model)


def test_an_unfused_optimizer_state_resumes_under_a_gradient_scaler() -> None:
    """fp16 steps through GradScaler, which hands the optimizer its scale: only the fused
    kernel takes it. A state saved by the unfused loop must resume fused, not raise."""
    cfg = compose(["model=tiny", "encoding=absolute", "model.dropout=0.0"])
    model = build_model(cfg, 40)
    old = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randint(4, 40, (2, 5)), torch.randint(4, 40, (2, 4))).sum().backward()
    old.step()
    optimizer, _, scaler = build_optimization(model, cfg, torch.device("cpu"), "fp16")
    load_optimizer_state(optimizer, old.state_dict())
    assert scaler.is_enabled() and optimizer.param_groups[0]["fused"]
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(torch.randint(4, 40, (2, 5)), torch.randint(4, 40, (2, 4))).float().sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("encoding", list(training_presets()))
def test_padding_lengths_to_a_multiple_leaves_the_loss_unchanged(encoding: str) -> None:
    """train.length_multiple only adds PAD columns: the loss and gradients are the same."""
    cfg = compose(["model=tiny", f"encoding={encoding}", "model.dropout=0.0"])
    # float64 weights; the loss itself is float32 (log_softmax of .float() logits)
    model = build_model(cfg, vocab_size=40).double().eval()
    rng = torch.Generator().manual_seed(0)
    src = [torch.randint(4, 40, (n,), generator=rng).tolist() for n in (5, 11, 3)]
    tgt = [torch.randint(4, 40, (n,), generator=rng).tolist() for n in (6, 9, 2)]
    split = EncodedSplit("pairs", RaggedIds.from_lists(src, append=EOS), RaggedIds.from_lists(tgt))
    results = []
    for multiple in (1, 8):
        batch = collate(split, [0, 1, 2], length_multiple=multiple)
        loss, nll = batch_loss(model, model.output_weight, batch, 0.1, chunk_tokens=4)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        results.append((loss.detach(), nll.detach(), grads))
    (loss1, nll1, grads1), (loss8, nll8, grads8) = results
    assert torch.allclose(loss8, loss1, rtol=1e-6) and torch.allclose(nll8, nll1, rtol=1e-6)
    assert len(grads8) == len(grads1)
    for g8, g1 in zip(grads8, grads1, strict=True):
        assert torch.allclose(g8, g1, rtol=1e-5, atol=1e-6), encoding
