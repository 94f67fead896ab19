"""T5 relative position buckets (Raffel et al. 2020) against loop references written from the
paper's description, and the model behaviour they must keep: layer sharing, cached
decoding, translation invariance, batch-independent search."""

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
from nmt.encodings.t5 import T5RelativeBias, relative_position_bucket
from nmt.model import build_model, parameter_counts
from nmt.search import beam_search

TOL = 1e-6


def tiny(*overrides: str) -> torch.nn.Module:
    cfg = compose(["model=tiny", "encoding=t5", "model.dropout=0.0", *overrides])
    return build_model(cfg, vocab_size=40).eval()


def one_layer(buckets: int = 8, distance: int = 5) -> torch.nn.Module:
    """A float64 model with one layer a side, 3 heads of 4, few buckets (short sentences
    reach the logarithmic buckets and the last one)."""
    return tiny(
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "model.d_model=12",
        "model.heads=3",
        "model.d_ff=16",
        f"encoding.t5_num_buckets={buckets}",
        f"encoding.t5_max_distance={distance}",
    ).double()


def randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


# ---------------------------------------------------------------------------------------
# references, from the paper's description alone


def ref_bucket(relative: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """Section 2.1 / T5's bucketing of the offset `relative` = key - query, one int at a time.

    Bidirectional: keys after the query take the upper half of the buckets. Within a
    direction, distances below half its buckets are exact; the rest are spaced
    logarithmically up to max_distance, and everything farther shares the last bucket.
    """
    offset = 0
    if bidirectional:
        num_buckets //= 2
        if relative > 0:
            offset = num_buckets
        n = abs(relative)
    else:
        n = max(-relative, 0)
    exact = num_buckets // 2
    if n < exact:
        return offset + n
    log_bucket = exact + int(
        math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    )
    return offset + min(log_bucket, num_buckets - 1)


def ref_self_attention(
    attn: MultiHeadAttention,
    x: Tensor,
    pad: Tensor,
    causal: bool,
    table: Tensor,
    buckets: int,
    distance: int,
    bidirectional: bool | None = None,
) -> Tensor:
    """softmax(q_i . k_j / sqrt(d) + b_h[bucket(j - i)]) v, element by element, then out_proj;
    `table` is the (buckets, heads) scalar bias; buckets bidirectional unless causal."""
    bidirectional = not causal if bidirectional is None else bidirectional
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
                        q[b, h, i] @ k[b, h, j] / math.sqrt(d)
                        + table[ref_bucket(j - i, bidirectional, buckets, distance), h]
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
# buckets and the bias

# (key - query, bidirectional, num_buckets, max_distance) -> bucket, worked out by hand:
# 32 buckets bidirectional: 16 a side, 0..7 exact, then 8 + floor(8 log(n/8) / log(16));
# unidirectional: 0..15 exact, then 16 + floor(16 log(n/16) / log(8)), capped at 31.
HAND_TABLE = [
    (0, True, 32, 128, 0),
    (-1, True, 32, 128, 1),
    (-7, True, 32, 128, 7),
    (-8, True, 32, 128, 8),
    (-12, True, 32, 128, 9),  # 8 log(1.5) / log(16) = 1.17
    (-16, True, 32, 128, 10),  # 8 log(2) / log(16) = 2
    (-100, True, 32, 128, 15),  # 8 log(12.5) / log(16) = 7.29
    (-1000, True, 32, 128, 15),  # past max_distance: the last bucket of the side
    (1, True, 32, 128, 17),  # keys after the query: the upper half
    (7, True, 32, 128, 23),
    (20, True, 32, 128, 26),  # 16 + 8 + floor(2.64)
    (200, True, 32, 128, 31),
    (5, False, 32, 128, 0),  # decoder: a later key counts as distance 0 (and is masked)
    (-3, False, 32, 128, 3),
    (-15, False, 32, 128, 15),
    (-17, False, 32, 128, 16),  # 16 log(17/16) / log(8) = 0.47
    (-31, False, 32, 128, 21),  # 16 log(31/16) / log(8) = 5.09
    (-100, False, 32, 128, 30),  # 16 log(6.25) / log(8) = 14.1
    (-128, False, 32, 128, 31),
    (-3, True, 8, 10, 2),  # 4 a side, 0..1 exact: 2 + floor(2 log(1.5) / log(5)) = 2
    (-5, True, 8, 10, 3),  # 2 + floor(2 log(2.5) / log(5)) = 2 + 1
    (3, True, 8, 10, 6),
    (-10, True, 8, 10, 3),
]


def test_buckets_match_a_hand_computed_table() -> None:
    for relative, bidirectional, buckets, distance, want in HAND_TABLE:
        got = relative_position_bucket(torch.tensor([relative]), bidirectional, buckets, distance)
        assert got.item() == want, (relative, bidirectional, buckets, distance)
        assert ref_bucket(relative, bidirectional, buckets, distance) == want


@pytest.mark.parametrize("buckets,distance", [(32, 128), (8, 10), (8, 5), (16, 64), (6, 5)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_buckets_match_the_reference_everywhere(bidirectional, buckets, distance) -> None:
    relative = torch.arange(-300, 301)
    got = relative_position_bucket(relative, bidirectional, buckets, distance).tolist()
    want = [ref_bucket(r, bidirectional, buckets, distance) for r in range(-300, 301)]
    assert got == want
    assert min(got) >= 0 and max(got) <= buckets - 1


@pytest.mark.parametrize("causal", [False, True])
def test_bias_is_the_table_entry_of_each_bucket(causal: bool) -> None:
    module = T5RelativeBias(3, 8, 5, bidirectional=not causal, std=1.0).double()
    table = module.relative_attention_bias.weight.detach()
    q = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    for q_start, k_len in ((0, 4), (5, 9)):  # a whole sequence; four queries after a cache
        bias = module.score_bias(q, q_start, k_len)
        assert bias.shape == (1, 3, 4, k_len)
        for h in range(3):
            for n in range(4):
                for j in range(k_len):
                    want = table[ref_bucket(j - (q_start + n), not causal, 8, 5), h]
                    assert bias[0, h, n, j].item() == want.item()


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_the_paper(causal: bool) -> None:
    torch.manual_seed(1)
    model = one_layer()
    layer = model.decoder_layers[0] if causal else model.encoder_layers[0]
    attn = layer.self_attn
    assert attn.positions.bidirectional == (not causal)
    randomize(attn)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    pad = torch.tensor([[False] * 9, [False] * 6 + [True] * 3])
    table = attn.positions.relative_attention_bias.weight.detach()
    got = attn(x, key_padding_mask=pad, causal=causal)
    want = ref_self_attention(attn, x, pad, causal, table, 8, 5)
    assert (got - want).abs().max().item() < TOL
    # The reference can tell: a bias divided by sqrt(d_head) = 2, or the other stack's buckets.
    scaled = ref_self_attention(attn, x, pad, causal, table / 2, 8, 5)
    assert (got - scaled).abs().max().item() > 1e-3
    swapped = ref_self_attention(attn, x, pad, causal, table, 8, 5, bidirectional=causal)
    assert (got - swapped).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------------------
# sharing across layers


def test_one_table_per_stack_by_default() -> None:
    model = tiny("model.encoder_layers=3", "model.decoder_layers=2")
    enc = [layer.self_attn.positions for layer in model.encoder_layers]
    dec = [layer.self_attn.positions for layer in model.decoder_layers]
    assert all(p is enc[0] for p in enc) and all(p is dec[0] for p in dec)
    weights = {id(p.relative_attention_bias.weight) for p in enc + dec}
    assert len(weights) == 2  # one table per stack, the encoder's and the decoder's
    assert enc[0].bidirectional and not dec[0].bidirectional
    heads = model.encoder_layers[0].self_attn.heads
    assert parameter_counts(model)["positions"] == 2 * 32 * heads
    # One table learns from every layer: its gradient is the sum over the layers.
    model.train()
    src, tgt = torch.tensor([[5, 6, 7, 3]]), torch.tensor([[2, 8, 9, 10]])
    model(src, tgt).logsumexp(-1).sum().backward()
    assert enc[0].relative_attention_bias.weight.grad.abs().sum() > 0


def test_per_layer_tables_are_separate_parameters() -> None:
    model = tiny(
        "model.encoder_layers=3", "model.decoder_layers=2", "encoding.t5_share_layers=false"
    )
    tables = [
        layer.self_attn.positions.relative_attention_bias.weight
        for layer in (*model.encoder_layers, *model.decoder_layers)
    ]
    assert len({id(t) for t in tables}) == 5
    assert all((a - b).abs().max() > 0 for a, b in zip(tables, tables[1:], strict=False))
    heads = model.encoder_layers[0].self_attn.heads
    assert parameter_counts(model)["positions"] == 5 * 32 * heads


@pytest.mark.parametrize("share", ["true", "false"])
def test_state_dict_round_trip_keeps_the_outputs(share: str) -> None:
    torch.manual_seed(5)
    model = tiny(f"encoding.t5_share_layers={share}")
    randomize(model)
    fresh = tiny(f"encoding.t5_share_layers={share}")
    fresh.load_state_dict(model.state_dict())
    if share == "true":  # still one table per stack after loading
        layers = fresh.encoder_layers
        assert layers[0].self_attn.positions is layers[1].self_attn.positions
    src, tgt = torch.tensor([[5, 6, 7, 3], [8, 3, 0, 0]]), torch.tensor([[2, 8, 9], [2, 4, 5]])
    with torch.no_grad():
        assert (model(src, tgt) - fresh(src, tgt)).abs().max().item() == 0


# ---------------------------------------------------------------------------------------
# the model around it


@pytest.mark.parametrize("share", ["true", "false"])
def test_cached_decoding_equals_the_full_forward_pass(share: str) -> None:
    torch.manual_seed(3)
    # 8 buckets up to distance 6: nine target positions reach the logarithmic buckets.
    model = tiny(
        "encoding.t5_num_buckets=8",
        "encoding.t5_max_distance=6",
        f"encoding.t5_share_layers={share}",
        "model.decoder_layers=3",
    )
    randomize(model.decoder_layers)  # bias tables as large as the content logits
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
    """Bucket indices cached under inference_mode must not break a later backward pass."""
    model = tiny()
    src, tgt = torch.tensor([[5, 6, 7, 3]]), torch.tensor([[2, 8, 9, 10]])
    with torch.inference_mode():
        model(src, tgt)
    model.train()
    model(src, tgt).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_encoder_states_ignore_a_shift_inside_padding_but_not_a_permutation() -> None:
    torch.manual_seed(4)
    model = tiny("encoding.t5_num_buckets=8", "encoding.t5_max_distance=6")
    randomize(model.encoder_layers)
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


def random_sources(n: int, max_len: int = 9, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(n, max_len, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(1, max_len, (1,), generator=g))
        src[i, :length] = torch.randint(4, 40, (length,), generator=g)
        src[i, length] = EOS
    return src


@pytest.mark.parametrize("share", ["true", "false"])
def test_a_sentence_decoded_alone_equals_it_inside_a_batch(share: str) -> None:
    model = tiny(f"encoding.t5_share_layers={share}")
    src = random_sources(6)
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
    positions = T5RelativeBias(H, 8, 5, bidirectional=not causal, std=1.0)
    attn = MultiHeadAttention(H * d, H, 0.0, positions).double().eval()
    x = torch.randn(3, 9, H * d, dtype=torch.float64)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, 6:] = pad[2, 2:] = True
    outs = {}
    for fused in (True, False):
        monkeypatch.setattr(attention, "_fused_kernel_pays", lambda *_, fused=fused: fused)
        whole = attn(x, key_padding_mask=None if causal else pad, causal=causal)
        steps = None
        if causal:  # five queries after a cache of four: q_start = 4
            cache = KeyValueCache()
            attn(x[:, :4], causal=True, cache=cache)
            steps = attn(x[:, 4:], causal=True, cache=cache)
            torch.testing.assert_close(steps, whole[:, 4:], rtol=0, atol=1e-10)
        outs[fused] = (whole, steps)
    torch.testing.assert_close(outs[True], outs[False], rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------
# configuration


def test_preset_composes_and_validates() -> None:
    cfg = compose(["encoding=t5"])
    validate(cfg)
    enc = cfg.encoding
    assert (enc.name, enc.input, enc.attention) == ("t5", "none", "t5")
    assert (enc.t5_num_buckets, enc.t5_max_distance, enc.t5_share_layers) == (32, 128, True)
    # The smallest legal table: 4 buckets (1 exact and 1 logarithmic a side), distance 3.
    validate(compose(["encoding=t5", "encoding.t5_num_buckets=4", "encoding.t5_max_distance=3"]))


@pytest.mark.parametrize(
    "override,message",
    [
        ("encoding.t5_num_buckets=3", "encoding.t5_num_buckets=3 must be even and >= 4"),
        ("encoding.t5_num_buckets=2", "encoding.t5_num_buckets=2 must be even and >= 4"),
        ("encoding.t5_max_distance=0", "encoding.t5_max_distance=0 must exceed"),
        ("encoding.t5_max_distance=16", r"encoding.t5_max_distance=16 must exceed .* = 16\)"),
    ],
)
def test_a_bad_option_is_one_clear_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        validate(compose(["encoding=t5", override]))
    assert "T5 uses" in str(raised.value)  # ... and says what a working value looks like
