"""Every position encoding, behind one small interface (DESIGN.md, "one interface").

An encoding answers two questions:

1. what to add to token embeddings before the first layer: `InputPositions`
   (sinusoidal or learned absolute tables; nothing for relative, rotary, none);
2. what to do inside self-attention: an `AttentionPositions` module per layer
   (Shaw relative edges on the logits and the output; rotary rotations of q and k).

`combined` is absolute for (1) and relative for (2). Cross-attention gets neither.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nmt.config import ConfigError, relative_terms

# ----------------------------------------------------------------------------------------
# (1) positions added to the embeddings


class InputPositions(nn.Module):
    """Absolute positions added to `(B, N, D)` embeddings, starting at position `offset`."""

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class SinusoidalPositions(InputPositions):
    """Vaswani et al. 2017, eq. in section 3.5: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos."""

    def __init__(self, d_model: int, base: float = 10000.0, initial_len: int = 1024) -> None:
        super().__init__()
        self.d_model, self.base = d_model, base
        self.register_buffer("table", self._build(initial_len), persistent=False)

    def _build(self, length: int) -> Tensor:
        position = torch.arange(length, dtype=torch.float64).unsqueeze(1)
        freq = self.base ** (-torch.arange(0, self.d_model, 2, dtype=torch.float64) / self.d_model)
        table = torch.zeros(length, self.d_model, dtype=torch.float64)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq[: self.d_model // 2])
        return table.to(torch.float32)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        end = offset + x.size(1)
        if end > self.table.size(0):  # no length limit: grow the table (rarely, on long input)
            self.table = self._build(max(end, 2 * self.table.size(0))).to(self.table.device)
        return x + self.table[offset:end].to(x.dtype)


class LearnedPositions(InputPositions):
    """One trained vector per absolute position, up to `max_len`."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.table = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.table.weight, std=d_model**-0.5)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        end = offset + x.size(1)
        if end > self.max_len:
            raise ConfigError(
                f"a sequence reaches position {end} but encoding=learned has a table of "
                f"encoding.max_len={self.max_len} positions; retrain with a larger "
                f"encoding.max_len or filter longer inputs"
            )
        return x + self.table.weight[offset:end].to(x.dtype)


# ----------------------------------------------------------------------------------------
# (2) positions inside self-attention


class AttentionPositions(nn.Module):
    """What an encoding does inside one self-attention layer; the default does nothing.

    Shapes: q, k `(B, H, N, d)`; `q_start` is the absolute position of the first query
    (the cache length during incremental decoding), keys always start at position 0.
    """

    has_score_term = False
    has_value_term = False

    @property
    def length_dependent(self) -> bool:
        """Whether `rotate` depends on `total`: cached keys must then be rotated at every step."""
        return False

    def rotate(self, x: Tensor, start: int, total: int | list[int]) -> Tensor:
        """Applied to queries and keys. `total`: the sequence length so far (start + new), or
        each row's own length (the encoder, whose rows are padded to the longest)."""
        return x

    def score_bias(self, q: Tensor, q_start: int, k_len: int) -> Tensor:
        """Additive logits `(B, H, Nq, Nk)`, unscaled (the caller divides by sqrt(d))."""
        raise NotImplementedError

    def value_term(self, weights: Tensor, q_start: int) -> Tensor:
        """Term added to the attention output `(B, H, Nq, d)` from weights `(B, H, Nq, Nk)`."""
        raise NotImplementedError


class RelativePositionBias(AttentionPositions):
    """Shaw et al. 2018 relative position representations with clipping distance k.

    eq. (4):  e_ij = q_i . (k_j + a^K_ij) / sqrt(d),   eq. (3):  z_i = sum_j a_ij (v_j + a^V_ij),
    eq. (6):  a^K_ij = w^K[clip(j - i, -k, k)],  with 2k+1 edge vectors per table.

    The key term is `q @ E_K^T` (B, H, N, 2k+1) gathered to (B, H, N, N); the value term is
    the weights summed per bucket (B, H, N, 2k+1) times E_V. No (N, N, d) tensor is built
    (the paper's section 3.3).
    """

    def __init__(
        self, heads: int, d_head: int, k: int, keys: bool, values: bool, share_heads: bool
    ) -> None:
        super().__init__()
        if k < 0:
            raise ConfigError(f"encoding.k={k} must be >= 0")
        self.k, self.heads, self.d_head = k, heads, d_head
        self.share_heads = share_heads
        shape = (2 * k + 1, d_head) if share_heads else (heads, 2 * k + 1, d_head)
        self.has_score_term, self.has_value_term = keys, values
        self.edge_keys = nn.Parameter(torch.empty(shape)) if keys else None
        self.edge_values = nn.Parameter(torch.empty(shape)) if values else None
        for table in (self.edge_keys, self.edge_values):
            if table is not None:
                nn.init.normal_(table, std=d_head**-0.5)
        # Keyed with the inference-mode flag: a tensor made under torch.inference_mode()
        # cannot be saved for a later backward pass.
        self._index_cache: dict[tuple[Any, ...], tuple[Tensor, int, int]] = {}

    def bucket_index(self, q_start: int, q_len: int, k_len: int, device: torch.device) -> Tensor:
        """r(i, j) = clip(j - i, -k, k) + k for queries q_start.. and keys 0..; `(Nq, Nk)` long."""
        index, lo, _ = self._window_index(q_start, q_len, k_len, device)
        return index + lo

    def _window_index(self, q_start: int, q_len: int, k_len: int, device: torch.device):
        """(r - lo, lo, hi): the buckets lo..hi these queries and keys can reach, and the index
        into that window. With k far above the sentence length (Table 2's k = 64, 256) most of
        the 2k+1 buckets are unreachable; the terms below only touch the reachable ones."""
        key = (q_start, q_len, k_len, device, torch.is_inference_mode_enabled())
        cached = self._index_cache.get(key)
        if cached is None:
            lo = max(-self.k, -(q_start + q_len - 1)) + self.k  # most negative offset j - i
            hi = max(min(self.k, k_len - 1 - q_start), -self.k) + self.k  # most positive
            i = torch.arange(q_start, q_start + q_len, device=device).unsqueeze(1)
            j = torch.arange(k_len, device=device).unsqueeze(0)
            index = (j - i).clamp(-self.k, self.k) + (self.k - lo)
            if len(self._index_cache) > 64:  # decoding visits many (q_start, k_len) pairs
                self._index_cache.clear()
            cached = self._index_cache[key] = (index, lo, hi)
        return cached

    def score_bias(self, q: Tensor, q_start: int, k_len: int) -> Tensor:
        B, H, Nq, _ = q.shape
        index, lo, hi = self._window_index(q_start, Nq, k_len, q.device)
        edge = self.edge_keys[..., lo : hi + 1, :].to(q.dtype)  # type: ignore[index]
        if self.share_heads:
            per_bucket = q @ edge.t()  # (B, H, Nq, hi - lo + 1)
        else:  # einsum batches over heads; a broadcast matmul would copy the table B times
            per_bucket = torch.einsum("bhnd,hrd->bhnr", q, edge)
        return per_bucket.gather(-1, index.expand(B, H, Nq, k_len))  # (B, H, Nq, Nk)

    def value_term(self, weights: Tensor, q_start: int) -> Tensor:
        B, H, Nq, Nk = weights.shape
        index, lo, hi = self._window_index(q_start, Nq, Nk, weights.device)
        buckets = weights.new_zeros(B, H, Nq, hi - lo + 1)
        buckets = buckets.scatter_add(-1, index.expand(B, H, Nq, Nk), weights)  # (B, H, Nq, hi - lo + 1)
        edge = self.edge_values[..., lo : hi + 1, :].to(weights.dtype)  # type: ignore[index]
        if self.share_heads:
            return buckets @ edge  # (B, H, Nq, d)
        return torch.einsum("bhnr,hrd->bhnd", buckets, edge)


class RotaryPositions(AttentionPositions):
    """Rotary position embedding (Su et al. 2021), rotate-half layout.

    Length extension at evaluation only (training always uses the plain rotation), with a
    factor s: `linear` divides positions by s (Chen et al. 2023, position interpolation);
    `ntk` raises the base to base * s^(d / (d - 2)) (the "NTK-aware" scaling). Fixed
    scalings use s = `factor` at every length; the dynamic ones use s = max(1, N / train_len)
    for a sequence of N positions, so the lengths seen in training are left untouched
    (the "dynamic NTK" of Hugging Face transformers with scaling factor 1).
    """

    def __init__(
        self, d_head: int, base: float, scaling: str = "none", factor: float = 1.0, train_len: int = 0
    ) -> None:
        super().__init__()
        if d_head % 2:
            raise ConfigError(f"rotary positions need an even head size, got {d_head}")
        if scaling.startswith("dynamic") and train_len < 1:
            raise ConfigError(f"rotary scaling {scaling!r} needs train_len >= 1, got {train_len}")
        self.d_head, self.base, self.scaling, self.factor = d_head, base, scaling, factor
        self.train_len = train_len
        self._cos_sin: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}

    @property
    def length_dependent(self) -> bool:
        return not self.training and self.scaling.startswith("dynamic")

    def _scale(self, total: int) -> float:
        if self.training or self.scaling == "none":
            return 1.0
        if self.length_dependent:
            return max(1.0, total / self.train_len)
        return self.factor

    def _angles(self, start: int, length: int, scale: float, device: torch.device, dtype: torch.dtype):
        key = (start, length, scale, device, dtype, torch.is_inference_mode_enabled())
        if key not in self._cos_sin:
            base, pos_scale = self.base, 1.0
            if self.scaling.endswith("ntk"):
                base = self.base * scale ** (self.d_head / (self.d_head - 2))
            elif self.scaling.endswith("linear"):
                pos_scale = 1.0 / scale
            half = self.d_head // 2
            # float64 on the CPU (MPS has no float64; long positions need the precision), then
            # one copy to the device in the compute dtype.
            inv_freq = base ** (-torch.arange(half, dtype=torch.float64) / half)
            pos = torch.arange(start, start + length, dtype=torch.float64) * pos_scale
            angles = pos.unsqueeze(1) * inv_freq.unsqueeze(0)  # (N, d/2)
            if len(self._cos_sin) > 256:  # one entry per (length, factor) met
                self._cos_sin.clear()
            self._cos_sin[key] = (angles.cos().to(device, dtype), angles.sin().to(device, dtype))
        return self._cos_sin[key]

    def rotate(self, x: Tensor, start: int, total: int | list[int]) -> Tensor:
        length = x.size(-2)
        if isinstance(total, list):  # given only under dynamic scaling
            # A factor per row: a short sentence padded to a long batch keeps its own (1).
            rows = [self._angles(start, length, self._scale(n), x.device, x.dtype) for n in total]
            cos = torch.stack([c for c, _ in rows]).unsqueeze(1)  # (B, 1, N, d/2)
            sin = torch.stack([s for _, s in rows]).unsqueeze(1)
        else:
            cos, sin = self._angles(start, length, self._scale(total), x.device, x.dtype)  # (N, d/2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# ----------------------------------------------------------------------------------------
# construction from the `encoding` config group


def build_input_positions(enc: Any, d_model: int) -> InputPositions | None:
    """The embedding-side term of an encoding (None for relative, rotary, none)."""
    if enc.name in ("absolute", "combined"):
        return SinusoidalPositions(d_model)
    if enc.name == "learned":
        return LearnedPositions(d_model, enc.max_len)
    return None


def build_attention_positions(enc: Any, heads: int, d_head: int) -> AttentionPositions | None:
    """The self-attention term of an encoding for one layer (None for absolute, learned, none)."""
    if enc.name in ("relative", "combined"):
        keys, values = relative_terms(enc)
        return RelativePositionBias(heads, d_head, enc.k, keys, values, enc.share_heads)
    if enc.name == "rotary":
        return RotaryPositions(
            d_head, enc.rotary_base, enc.rotary_scaling, enc.rotary_factor, enc.rotary_train_len
        )
    return None
