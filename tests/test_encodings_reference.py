"""The library's attention and encoder against slow references written from the papers.

References use explicit loops / an explicit (N, N, d) edge tensor in float64, the thing the
library must never build; they read the library's weights and nothing else.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from nmt.attention import MultiHeadAttention
from nmt.config import ConfigError
from nmt.encodings.relative import RelativePositionBias
from nmt.encodings.rotary import RotaryPositions
from nmt.encodings.sinusoidal import SinusoidalPositions
from nmt.model import build_model
from nmt.presets import complete_encoding

TOL = 1e-6


def make_cfg(encoding: str, **enc) -> OmegaConf:
    model = dict(
        name="ref",
        encoder_layers=1,
        decoder_layers=1,
        d_model=16,
        heads=2,
        d_ff=24,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        norm="post",
        tie_embeddings=True,
        init_std=None,
    )
    encoding_cfg = dict(
        name=encoding,
        k=2,
        keys=True,
        values=True,
        share_heads=False,
        max_len=64,
        rotary_base=10000.0,
        rotary_scaling="none",
        rotary_factor=1.0,
        rotary_train_len=0,
    )
    encoding_cfg.update(enc)
    # A config as older versions wrote it (no input / attention keys): completed from the preset.
    return OmegaConf.create({"model": model, "encoding": complete_encoding(encoding_cfg)})


# ---------------------------------------------------------------------------------------
# references


def ref_sinusoid(n: int, d: int) -> torch.Tensor:
    """Vaswani et al. 2017, section 3.5, element by element."""
    pe = torch.zeros(n, d, dtype=torch.float64)
    for pos in range(n):
        for i in range(0, d, 2):
            pe[pos, i] = math.sin(pos / 10000 ** (i / d))
            pe[pos, i + 1] = math.cos(pos / 10000 ** (i / d))
    return pe


def ref_rotate(x: torch.Tensor, positions: list[int], base: float) -> torch.Tensor:
    """RoPE as 2x2 rotations of pairs (m, m + d/2) by angle pos * base^(-2m/d)."""
    d = x.size(-1)
    out = x.clone()
    for n, pos in enumerate(positions):
        for m in range(d // 2):
            theta = pos * base ** (-2 * m / d)
            a, b = x[..., n, m], x[..., n, m + d // 2]
            out[..., n, m] = a * math.cos(theta) - b * math.sin(theta)
            out[..., n, m + d // 2] = a * math.sin(theta) + b * math.cos(theta)
    return out


def ref_attention(
    attn: MultiHeadAttention,
    x: torch.Tensor,
    pad: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Shaw et al. 2018 eq. (3)-(6) with explicit edge tensors a^K, a^V of shape (N, N, d)."""
    B, N, D = x.shape
    H, d = attn.heads, attn.d_head

    def proj(lin):
        return (x @ lin.weight.t() + lin.bias).view(B, N, H, d).transpose(1, 2)

    q, k, v = proj(attn.q_proj), proj(attn.k_proj), proj(attn.v_proj)
    pos = attn.positions
    if isinstance(pos, RotaryPositions):
        q = ref_rotate(q, list(range(N)), pos.base)
        k = ref_rotate(k, list(range(N)), pos.base)
    a_k = torch.zeros(H, N, N, d, dtype=x.dtype)
    a_v = torch.zeros(H, N, N, d, dtype=x.dtype)
    if isinstance(pos, RelativePositionBias):
        for h in range(H):
            for i in range(N):
                for j in range(N):
                    r = max(-pos.k, min(pos.k, j - i)) + pos.k  # eq. (6)
                    if pos.edge_keys is not None:
                        table = pos.edge_keys if pos.share_heads else pos.edge_keys[h]
                        a_k[h, i, j] = table[r]
                    if pos.edge_values is not None:
                        table = pos.edge_values if pos.share_heads else pos.edge_values[h]
                        a_v[h, i, j] = table[r]
    out = torch.zeros(B, H, N, d, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                e = torch.stack(
                    [q[b, h, i] @ (k[b, h, j] + a_k[h, i, j]) / math.sqrt(d) for j in range(N)]
                )  # eq. (4)
                for j in range(N):
                    if (pad is not None and pad[b, j]) or (causal and j > i):
                        e[j] = float("-inf")
                alpha = torch.softmax(e, dim=0)  # eq. (2)
                out[b, h, i] = sum(
                    alpha[j] * (v[b, h, j] + a_v[h, i, j]) for j in range(N)
                )  # eq. (3)
    z = out.transpose(1, 2).reshape(B, N, D)
    return z @ attn.out_proj.weight.t() + attn.out_proj.bias


def ref_encoder(model, src: torch.Tensor) -> torch.Tensor:
    """One post-norm encoder layer from its weights, position terms by the references above."""
    d_model = model.d_model
    x = model.embedding.weight[src] * math.sqrt(d_model)
    name = model.cfg_encoding_name
    if name in ("absolute", "combined"):
        x = x + ref_sinusoid(src.size(1), d_model)
    elif name == "learned":
        x = x + model.src_positions.table.weight[: src.size(1)]
    layer = model.encoder_layers[0]
    pad = src.eq(model.pad_id)
    x = torch.nn.functional.layer_norm(
        x + ref_attention(layer.self_attn, x, pad),
        (d_model,),
        layer.attn_block.norm.weight,
        layer.attn_block.norm.bias,
    )
    h = torch.relu(x @ layer.ffn.fc1.weight.t() + layer.ffn.fc1.bias)
    h = h @ layer.ffn.fc2.weight.t() + layer.ffn.fc2.bias
    return torch.nn.functional.layer_norm(
        x + h, (d_model,), layer.ffn_block.norm.weight, layer.ffn_block.norm.bias
    )


# ---------------------------------------------------------------------------------------
# tests


def randomize(module: torch.nn.Module) -> None:
    """Give every parameter (biases, norms, edge tables) a distinct random value."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


ATTENTION_CASES = {
    "relative-kv-per-head": dict(encoding="relative"),
    "relative-kv-shared": dict(encoding="relative", share_heads=True),
    "relative-keys-only": dict(encoding="relative", values=False),
    "relative-values-only": dict(encoding="relative", keys=False),
    "relative-keys-only-shared": dict(encoding="relative", values=False, share_heads=True),
    "relative-k0": dict(encoding="relative", k=0),
    "relative-k-beyond-length": dict(encoding="relative", k=9),
    "relative-shared-k-beyond-length": dict(encoding="relative", k=9, share_heads=True),
    "rotary": dict(encoding="rotary"),
    "none": dict(encoding="none"),
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_paper_equations(case: str, causal: bool) -> None:
    torch.manual_seed(1)
    model = build_model(make_cfg(**ATTENTION_CASES[case]), vocab_size=11).double()
    attn = model.encoder_layers[0].self_attn
    enc = ATTENTION_CASES[case]
    if enc["encoding"] == "relative":  # the configured terms, and only those, exist
        assert (attn.positions.edge_keys is not None) == enc.get("keys", True)
        assert (attn.positions.edge_values is not None) == enc.get("values", True)
    randomize(attn)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    got = attn(x, key_padding_mask=pad, causal=causal)
    want = ref_attention(attn, x, pad, causal)
    assert (got - want).abs().max().item() < TOL


@pytest.mark.parametrize(
    "encoding", ["absolute", "learned", "relative", "combined", "rotary", "none"]
)
def test_encoder_matches_reference(encoding: str) -> None:
    torch.manual_seed(2)
    model = build_model(make_cfg(encoding), vocab_size=11).double().eval()
    randomize(model)
    model.cfg_encoding_name = encoding
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 4, 3, 0, 0]])
    memory, _ = model.encode(src)
    want = ref_encoder(model, src)
    real = ~src.eq(0)
    assert (memory - want)[real].abs().max().item() < TOL


def test_sinusoid_table_matches_formula() -> None:
    table = SinusoidalPositions(8)(torch.zeros(1, 40, 8, dtype=torch.float64))[0]
    assert (table - ref_sinusoid(40, 8)).abs().max().item() < TOL


def test_relative_index_sign_and_clipping() -> None:
    # r(i, j) = clip(j - i, -k, k) + k: keys to the right of the query get the high buckets.
    rel = RelativePositionBias(heads=1, d_head=2, k=1, keys=True, values=False, share_heads=True)
    index = rel.bucket_index(0, 4, 4, torch.device("cpu"))
    assert index.tolist() == [[1, 2, 2, 2], [0, 1, 2, 2], [0, 0, 1, 2], [0, 0, 0, 1]]
    # The decoding row for the query at position 2 against keys 0..2.
    assert rel.bucket_index(2, 1, 3, torch.device("cpu")).tolist() == [[0, 0, 1]]


def test_asymmetric_key_table_gives_asymmetric_bias() -> None:
    # With q = 1 and E_K[r] = r, the bias at (i, j) must be d * (clip(j - i) + k) / sqrt(d):
    # the encoding returns its term in logit units, scaled like the content term (eq. 4).
    rel = RelativePositionBias(heads=1, d_head=2, k=2, keys=True, values=False, share_heads=True)
    with torch.no_grad():
        rel.edge_keys.copy_(torch.arange(5.0).unsqueeze(1).expand(5, 2))
    bias = rel.score_bias(torch.ones(1, 1, 5, 2), 0, 5)[0, 0]
    for i in range(5):
        for j in range(5):
            assert bias[i, j].item() == pytest.approx(
                2 * (max(-2, min(2, j - i)) + 2) / math.sqrt(2)
            )


def test_rotary_scaling_applies_at_evaluation_only() -> None:
    rot = RotaryPositions(d_head=8, base=10000.0, scaling="linear", factor=2.0)
    x = torch.randn(1, 1, 6, 8, dtype=torch.float64)
    rot.train()
    trained = rot.rotate(x, 0, 6)
    rot.eval()
    interpolated = rot.rotate(x, 0, 6)
    assert (trained - ref_rotate(x, list(range(6)), 10000.0)).abs().max() < TOL
    # Linear interpolation: position p behaves like p / factor (checked at even positions).
    plain = RotaryPositions(d_head=8, base=10000.0).eval().rotate(x, 0, 6)
    assert (
        interpolated[..., 2, :]
        - RotaryPositions(8, 10000.0).eval().rotate(x[..., 2:3, :], 1, 2)[..., 0, :]
    ).abs().max() < TOL
    assert (interpolated - plain).abs().max() > 1e-3


def test_ntk_scaling_raises_the_base() -> None:
    rot = RotaryPositions(d_head=8, base=10000.0, scaling="ntk", factor=4.0).eval()
    x = torch.randn(1, 1, 5, 8, dtype=torch.float64)
    want = ref_rotate(x, list(range(5)), 10000.0 * 4.0 ** (8 / 6))
    assert (rot.rotate(x, 0, 5) - want).abs().max() < TOL


def test_dynamic_scaling_leaves_training_lengths_alone_and_scales_by_length_past_them() -> None:
    x = torch.randn(1, 1, 12, 8, dtype=torch.float64)
    for method in ("linear", "ntk"):
        dynamic = RotaryPositions(8, 10000.0, scaling=f"dynamic_{method}", train_len=4).eval()
        plain = RotaryPositions(8, 10000.0).eval()
        assert (
            dynamic.rotate(x[..., :4, :], 0, 4) - plain.rotate(x[..., :4, :], 0, 4)
        ).abs().max() < TOL
        # 12 positions, trained on 4: the fixed scaling with factor 12 / 4 = 3
        fixed = RotaryPositions(8, 10000.0, scaling=method, factor=3.0).eval()
        assert (dynamic.rotate(x, 0, 12) - fixed.rotate(x, 0, 12)).abs().max() < TOL
        assert (dynamic.rotate(x, 0, 12) - plain.rotate(x, 0, 12)).abs().max() > 1e-3
    want = ref_rotate(x, [p / 3 for p in range(12)], 10000.0)  # position interpolation by 3
    got = RotaryPositions(8, 10000.0, scaling="dynamic_linear", train_len=4).eval().rotate(x, 0, 12)
    assert (got - want).abs().max() < TOL


def test_learned_positions_refuse_sequences_past_their_table() -> None:
    model = build_model(make_cfg("learned", max_len=4), vocab_size=11)
    with pytest.raises(ConfigError, match="encoding.max_len=4"):
        model.encode(torch.full((1, 5), 5))


@pytest.mark.parametrize("positions", ["none", "relative_keys", "rotary"])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_and_explicit_attention_agree(monkeypatch, positions, causal) -> None:
    """The fused SDPA path (GPUs; the CPU in fp32 without dropout or bias) and the explicit
    path (the CPU otherwise) compute the same attention, padding and the a^K bias included."""
    import nmt.attention as attention

    torch.manual_seed(0)
    H, d = 4, 8
    pos = {
        "none": None,
        "relative_keys": RelativePositionBias(H, d, 3, True, False, False),
        "rotary": RotaryPositions(d, 10000.0),
    }[positions]
    attn = MultiHeadAttention(H * d, H, 0.0, pos).double().eval()
    x = torch.randn(3, 7, H * d, dtype=torch.float64)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = pad[2, 2:] = True
    outs = {}
    for fused in (True, False):
        monkeypatch.setattr(attention, "_fused_kernel_pays", lambda *_, fused=fused: fused)
        outs[fused] = attn(x, key_padding_mask=None if causal else pad, causal=causal)
    torch.testing.assert_close(outs[True], outs[False], rtol=0, atol=1e-10)


@pytest.mark.parametrize("share_heads", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_clip_distance_zero_is_no_position_encoding(share_heads: bool, causal: bool) -> None:
    """k = 0 is Table 3's 'neither' row: one bucket makes q . a^K the same for every key (the
    softmax drops it) and a^V a constant added to every value, i.e. a value-projection bias."""
    torch.manual_seed(4)
    relative = build_model(
        make_cfg("relative", k=0, share_heads=share_heads), vocab_size=11
    ).double()
    plain = build_model(make_cfg("none"), vocab_size=11).double()
    rel_attn, plain_attn = relative.encoder_layers[0].self_attn, plain.encoder_layers[0].self_attn
    randomize(rel_attn)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        getattr(plain_attn, name).load_state_dict(getattr(rel_attn, name).state_dict())
    positions = rel_attn.positions
    # (H, 1, d_head), or (1, d_head) shared: as a bias of the (B, N, H * d_head) values
    a_v = positions.edge_values.detach().expand(positions.heads, 1, positions.d_head).reshape(-1)
    with torch.no_grad():
        plain_attn.v_proj.bias += a_v
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    got = rel_attn(x, key_padding_mask=pad, causal=causal)
    want = plain_attn(x, key_padding_mask=pad, causal=causal)
    assert (got - want).abs().max().item() < TOL
    # ... and the bias is what a^V is: without it the two differ.
    with torch.no_grad():
        plain_attn.v_proj.bias -= a_v
    without = plain_attn(x, key_padding_mask=pad, causal=causal)
    assert (got - without).abs().max().item() > 1e-3
