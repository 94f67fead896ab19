"""Decoding faster: in bf16 (`--precision bf16`) the model runs under autocast, the search in
float32, and fp32 stays the default so a checkpoint decodes the same everywhere; compiled
(`--compile`) it gives the same hypotheses as eager."""

from __future__ import annotations

import pytest
import torch

from nmt.config import DecodeConfig, compose
from nmt.decoding import translate_ids
from nmt.model import build_model
from nmt.search import beam_search

SOURCES = [[5, 6, 7, 8, 3], [9, 10, 11, 3], [12, 13, 14, 15, 16, 17, 3]]
SHORT = DecodeConfig(beam=4, max_len_a=0, max_len_b=6)


def model():
    torch.manual_seed(0)
    return build_model(compose(["model=tiny", "encoding=relative"]), 40).eval()


def test_bf16_decoding_runs_the_model_in_bf16_and_the_search_in_float32(monkeypatch) -> None:
    m = model()
    dtypes = []
    real = m.decode_step

    def spy(tokens, cache):
        logits = real(tokens, cache)
        dtypes.append(logits.dtype)
        return logits

    monkeypatch.setattr(m, "decode_step", spy)
    bf16 = translate_ids(m, SOURCES, SHORT, precision="bf16")
    assert set(dtypes) == {torch.bfloat16}
    dtypes.clear()
    fp32 = translate_ids(m, SOURCES, SHORT)
    assert set(dtypes) == {torch.float32}
    for a, b in zip(bf16, fp32, strict=True):
        assert len(a) == len(b) == 1 and all(isinstance(h.score, float) for h in a)
    # The scores are float32 sums of bf16 logits: close to fp32's, not equal to them.
    a, b = bf16[0][0], fp32[0][0]
    if a.tokens == b.tokens:
        assert a.score == pytest.approx(b.score, abs=0.1) and a.score != b.score


def test_the_default_is_fp32_and_equals_a_plain_search() -> None:
    m = model()
    got = translate_ids(m, SOURCES[:1], SHORT)
    want = beam_search(m, torch.tensor([SOURCES[0]]), SHORT)
    assert [h.tokens for h in got[0]] == [h.tokens for h in want[0]]


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision='fp8'"):
        translate_ids(model(), SOURCES, SHORT, precision="fp8")


@pytest.mark.slow
def test_compiled_decoding_gives_the_eager_hypotheses() -> None:
    """Sources of several lengths in two batches: the cache grows, beams and sentences
    leave, and one dynamic graph serves every step."""
    torch._dynamo.reset()
    m = model()
    settings = DecodeConfig(beam=3, max_len_a=0, max_len_b=7, max_tokens=16)
    sources = [*SOURCES, [20, 21, 3], [22, 23, 24, 25, 26, 27, 28, 29, 3]]
    eager = translate_ids(m, sources, settings)
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = translate_ids(m, sources, settings, compile=True)
    for a, b in zip(eager, compiled, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    assert graphs == 1, f"{graphs} graphs: sizes 0 and 1 must stay eager"
