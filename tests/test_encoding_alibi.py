"""ALiBi (Press et al. 2022) against loop references written from the paper, and the model
behaviour it must keep: cached decoding, translation invariance, batch-independent search."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import nmt.attention as attention
from nmt.attention import KeyValueCache, MultiHeadAttention
from nmt.config import ConfigError, DecodeConfig, compose
from nmt.config_checks import validate
from nmt.data.vocab import EOS
from nmt.encodings.alibi import ALiBiBias, alibi_slopes
from nmt.model import build_model, parameter_counts
from nmt.search import beam_search

TOL = 1e-6


def tiny(*overrides: str) -> torch.nn.Module:
    cfg = compose(["model=tiny", "encoding=alibi", "model.dropout=0.0", *overrides])
    return build_model(cfg, vocab_size=40).eval()


def one_layer(heads: int = 6) -> torch.nn.Module:
    """A float64 model with one layer a side, head size 4 (6 heads: not a power of two)."""
    return tiny(
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        f"model.d_model={4 * heads}",
        f"model.heads={heads}",
        "model.d_ff=16",
    ).double()


def randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


# ---------------------------------------------------------------------------------------
# references, from the paper alone


def ref_slopes(n: int) -> list[float]:
    """Section 3 and the authors' released rule, recursively: a power of two n gets
    start * ratio^h with start = ratio = 2^(-8/n); other n take the closest lower power of
    two's slopes, then every other slope of twice that power."""
    if math.log2(n).is_integer():
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**h for h in range(n)]
    p = 2 ** math.floor(math.log2(n))
    return ref_slopes(p) + ref_slopes(2 * p)[0::2][: n - p]


def ref_bias(slope: float, i: int, j: int) -> float:
    """Figure 3: the query at i adds m * -(i - j) for each key j; symmetric |i - j| when the
    keys after the query are visible (encoder)."""
    return -slope * abs(i - j)


def ref_self_attention(
    attn: MultiHeadAttention, x: Tensor, pad: Tensor, causal: bool, slopes: list[float]
) -> Tensor:
    """softmax(q_i . k_j / sqrt(d) - m_h |i - j|) v, element by element, then out_proj."""
    B, N, D = x.shape
    H, d = attn.heads, attn.d_head

    def proj(lin: torch.nn.Linear) -> Tensor:
        return (x @ lin.weight.t() + lin.bias).view(B, N, H, d).transpose(1, 2)

    q, k, v = proj(attn.q_proj), proj(attn.k_proj), proj(attn.v_proj)
    out = torch.zeros(B, H, N, d, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                e = torch.stack(
                    [
                        q[b, h, i] @ k[b, h, j] / math.sqrt(d) + ref_bias(slopes[h], i, j)
                        for j in range(N)
                    ]
                )
                for j in range(N):
                    if pad[b, j] or (causal and j > i):
                        e[j] = float("-inf")
                alpha = torch.softmax(e, dim=0)
                out[b, h, i] = sum(alpha[j] * v[b, h, j] for j in range(N))
    z = out.transpose(1, 2).reshape(B, N, D)
    return z @ attn.out_proj.weight.t() + attn.out_proj.bias


# ---------------------------------------------------------------------------------------
# the slopes and the bias


def test_slopes_are_the_papers_geometric_sequence() -> None:
    assert alibi_slopes(8) == [2.0**-h for h in range(1, 9)]  # 1/2, 1/4, ..., 1/256
    assert alibi_slopes(4) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]
    assert alibi_slopes(1) == [2.0**-8]
    # 6 heads: the 4 slopes of n = 4, then every other slope of n = 8 (1/2, 1/8).
    assert alibi_slopes(6) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    # 12 heads: the 8 of n = 8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 of n = 16.
    want = [2.0**-h for h in range(1, 9)] + [2.0 ** -(h / 2) for h in (1, 3, 5, 7)]
    assert alibi_slopes(12) == pytest.approx(want, rel=1e-12)
    for n in range(1, 33):
        assert alibi_slopes(n) == pytest.approx(ref_slopes(n), rel=1e-12), n


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [4, 6])
def test_bias_is_minus_slope_times_distance(causal: bool, heads: int) -> None:
    module = ALiBiBias(heads, causal)
    slopes = ref_slopes(heads)
    q = torch.zeros(2, heads, 5, 4, dtype=torch.float64)
    for q_start, k_len in ((0, 5), (3, 8)):  # a whole sequence; five queries after a cache
        bias = module.score_bias(q, q_start, k_len)
        assert bias.shape == (1, heads, 5, k_len) and bias.dtype == torch.float64
        for h in range(heads):
            for n in range(5):
                i = q_start + n
                for j in range(k_len):
                    if causal and j > i:
                        continue  # masked: no bias is defined there
                    want = -slopes[h] * (i - j) if causal else ref_bias(slopes[h], i, j)
                    assert bias[0, h, n, j].item() == pytest.approx(want, abs=1e-12)
    # Not divided by sqrt(d_head): the largest penalty is m_1 * distance, in logit units.
    assert module.score_bias(q, 0, 5)[0, 0, 4, 0].item() == pytest.approx(-4 * slopes[0])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [4, 6])
def test_self_attention_matches_the_paper(causal: bool, heads: int) -> None:
    torch.manual_seed(1)
    model = one_layer(heads)
    layer = model.decoder_layers[0] if causal else model.encoder_layers[0]
    attn = layer.self_attn
    assert isinstance(attn.positions, ALiBiBias) and attn.positions.causal == causal
    randomize(attn)
    x = torch.randn(2, 7, 4 * heads, dtype=torch.float64)
    pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    got = attn(x, key_padding_mask=pad, causal=causal)
    want = ref_self_attention(attn, x, pad, causal, ref_slopes(heads))
    assert (got - want).abs().max().item() < TOL
    # The reference can tell: without the bias (or with it divided by sqrt(d)) it differs.
    unbiased = ref_self_attention(attn, x, pad, causal, [0.0] * heads)
    scaled = ref_self_attention(attn, x, pad, causal, [m / 2 for m in ref_slopes(heads)])
    assert (got - unbiased).abs().max().item() > 1e-3
    assert (got - scaled).abs().max().item() > 1e-3


def test_the_bias_is_built_once_per_shape_and_dtype() -> None:
    module = ALiBiBias(4, causal=False)
    q = torch.zeros(1, 4, 6, 8)
    first = module.score_bias(q, 0, 6)
    assert module.score_bias(q, 0, 6) is first  # the next layer of the stack reuses it
    assert module.score_bias(q.bfloat16(), 0, 6) is not first
    assert first[0, 0, 5, 0].item() == pytest.approx(-5 * 2.0**-2)


def test_no_parameters_and_one_module_per_stack() -> None:
    model = tiny()
    counts = parameter_counts(model)
    assert counts["positions"] == 0
    assert counts["total"] == parameter_counts(tiny("encoding=none"))["total"]
    enc = [layer.self_attn.positions for layer in model.encoder_layers]
    dec = [layer.self_attn.positions for layer in model.decoder_layers]
    assert all(p is enc[0] for p in enc) and all(p is dec[0] for p in dec)
    assert enc[0] is not dec[0] and not enc[0].causal and dec[0].causal
    assert not any("positions" in key for key in model.state_dict())
    for layer in model.decoder_layers:
        assert layer.cross_attn.positions is None  # cross-attention has no position term


# ---------------------------------------------------------------------------------------
# the model around it


def test_cached_decoding_equals_the_full_forward_pass() -> None:
    torch.manual_seed(3)
    model = tiny("model.heads=8", "model.decoder_layers=3")
    src = torch.tensor([[5, 6, 7, 8, 9, 3], [10, 11, 12, 3, 0, 0], [13, 14, 3, 0, 0, 0]])
    tgt = torch.randint(4, 40, (3, 9))
    tgt[:, 0] = 2
    with torch.no_grad():
        memory, pad = model.encode(src)
        full = model.decode(tgt, memory, pad)
        cache = model.start_decoding(memory, pad)
        steps = [model.decode_step(tgt[:, t], cache) for t in range(5)]
        # Re-rank mid-sentence as beam search does: permute, duplicate and drop rows.
        order = torch.tensor([2, 0, 0])
        cache.reorder(order)
        after = [model.decode_step(tgt[order, t], cache) for t in range(5, 9)]
        full_reordered = model.decode(tgt[order], memory[order], pad[order])
    assert (torch.stack(steps, 1) - full[:, :5]).abs().max().item() < 1e-5
    assert (torch.stack(after, 1) - full_reordered[:, 5:]).abs().max().item() < 1e-5


def test_training_after_inference_mode_decoding() -> None:
    """Biases cached under inference_mode must not reach a later backward pass."""
    model = tiny()
    src, tgt = torch.tensor([[5, 6, 7, 3]]), torch.tensor([[2, 8, 9, 10]])
    with torch.inference_mode():
        model(src, tgt)
    model.train()
    model(src, tgt).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_encoder_states_ignore_a_shift_inside_padding_but_not_a_permutation() -> None:
    model = tiny()
    tokens = torch.tensor([7, 12, 9, 30, 5, 3])
    right = torch.cat([tokens, torch.zeros(4, dtype=torch.long)]).unsqueeze(0)
    left = torch.cat([torch.zeros(4, dtype=torch.long), tokens]).unsqueeze(0)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        a, _ = model.encode(right)
        b, _ = model.encode(left)
        plain, _ = model.encode(tokens.unsqueeze(0))
        shuffled, _ = model.encode(tokens[perm].unsqueeze(0))
    assert (a[0, :6] - b[0, 4:]).abs().max().item() < 1e-5
    assert (a[0, :6] - plain[0]).abs().max().item() < 1e-5
    # ... while order itself is seen: a permuted sentence is not a permuted output.
    assert (plain[0, perm] - shuffled[0]).abs().max().item() > 1e-3


def test_the_symmetric_encoder_cannot_tell_left_from_right() -> None:
    """-m|i - j| is the same for a key d to the left and d to the right, so the encoder
    states of a reversed sentence are the reversed states: with no position term in
    cross-attention the decoder cannot tell a sentence from its mirror image. A property
    of the paper's bias used both ways (it was designed for causal models), not of this
    code; the decoder, being causal, sees order."""
    model = tiny()
    src = torch.tensor([[7, 12, 9, 30, 5, 6, 8, 3]])
    with torch.no_grad():
        forward, _ = model.encode(src)
        backward, _ = model.encode(src.flip(1))
    assert (forward.flip(1) - backward).abs().max().item() < 1e-5
    t5 = build_model(compose(["model=tiny", "encoding=t5", "model.dropout=0.0"]), 40).eval()
    with torch.no_grad():  # directional buckets do see the difference
        forward, _ = t5.encode(src)
        backward, _ = t5.encode(src.flip(1))
    assert (forward.flip(1) - backward).abs().max().item() > 1e-3


def random_sources(n: int, max_len: int = 9, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(n, max_len, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(1, max_len, (1,), generator=g))
        src[i, :length] = torch.randint(4, 40, (length,), generator=g)
        src[i, length] = EOS
    return src


def test_a_sentence_decoded_alone_equals_it_inside_a_batch() -> None:
    model, src = tiny(), random_sources(6)
    settings = DecodeConfig(beam=3, nbest=2, max_len_b=10)
    batched = beam_search(model, src, settings)
    for i in range(len(src)):
        length = int(src[i].ne(0).sum())
        alone = beam_search(model, src[i : i + 1, :length], settings)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_fused_and_explicit_attention_agree(monkeypatch, causal: bool) -> None:
    """The fused kernel (GPUs) gets the bias as a float mask; the explicit path (the CPU with
    a bias) adds it to the scores: the same attention, padding and cached steps included."""
    torch.manual_seed(0)
    H, d = 4, 8
    attn = MultiHeadAttention(H * d, H, 0.0, ALiBiBias(H, causal)).double().eval()
    x = torch.randn(3, 7, H * d, dtype=torch.float64)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = pad[2, 2:] = True
    outs = {}
    for fused in (True, False):
        monkeypatch.setattr(attention, "_fused_kernel_pays", lambda *_, fused=fused: fused)
        whole = attn(x, key_padding_mask=None if causal else pad, causal=causal)
        steps = None
        if causal:  # three queries after a cache of four: q_start = 4
            cache = KeyValueCache()
            attn(x[:, :4], causal=True, cache=cache)
            steps = attn(x[:, 4:], causal=True, cache=cache)
            torch.testing.assert_close(steps, whole[:, 4:], rtol=0, atol=1e-10)
        outs[fused] = (whole, steps)
    torch.testing.assert_close(outs[True], outs[False], rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------
# configuration


def test_preset_composes_and_validates() -> None:
    cfg = compose(["encoding=alibi"])
    validate(cfg)
    assert (cfg.encoding.name, cfg.encoding.input, cfg.encoding.attention) == (
        "alibi",
        "none",
        "alibi",
    )


def test_a_misspelt_method_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"encoding.attention='alibi_' is unknown.*alibi"):
        validate(compose(["encoding=alibi", "encoding.attention=alibi_"]))
