"""Shaw et al. 2018 relative position representations, clipped at distance k.

`encoding=relative` (keys and values), `relative_keys`, `relative_values` (Table 3), and
with sinusoids on the embeddings `combined` (section 4). `k = 0` is legal: one bucket, no
order information (Table 2's first row).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nmt.encodings.base import (
    AttentionPositions,
    AttentionShape,
    EncodingMethod,
    ShapeCache,
    register,
)
from nmt.errors import ConfigError


@dataclass
class RelativeOptions:
    k: int = 16  # clipping distance: relative positions beyond +-k share one edge vector
    keys: bool = True  # a^K, the term on the attention logits (eq. 4)
    values: bool = True  # a^V, the term on the attention output (eq. 3)
    share_heads: bool = False  # False: (heads, 2k+1, d_head) tables, the paper's base setup


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
        self.scale = 1.0 / math.sqrt(d_head)  # eq. (4): the same 1/sqrt(d) as the content term
        shape = (2 * k + 1, d_head) if share_heads else (heads, 2 * k + 1, d_head)
        self.has_value_term = values
        self.edge_keys = nn.Parameter(torch.empty(shape)) if keys else None
        self.edge_values = nn.Parameter(torch.empty(shape)) if values else None
        for table in (self.edge_keys, self.edge_values):
            if table is not None:
                nn.init.normal_(table, std=d_head**-0.5)
        self._indices = ShapeCache()

    def bucket_index(self, q_start: int, q_len: int, k_len: int, device: torch.device) -> Tensor:
        """r(i, j) = clip(j - i, -k, k) + k for queries q_start.. and keys 0..; `(Nq, Nk)` long."""
        index, lo, _ = self._window_index(q_start, q_len, k_len, device)
        return index + lo

    def _window_index(
        self, q_start: int, q_len: int, k_len: int, device: torch.device
    ) -> tuple[Tensor, int, int]:
        """(r - lo, lo, hi): the buckets lo..hi these queries and keys can reach, and the index
        into that window. With k far above the sentence length (Table 2's k = 64, 256) most of
        the 2k+1 buckets are unreachable; the terms below only touch the reachable ones.
        Under torch.compile the lengths are symbolic: the window is the whole table, so
        the graph holds no length-dependent slice (Inductor fails on those bounds)."""
        if torch.compiler.is_compiling():
            lo, hi = 0, 2 * self.k
        else:
            lo = max(-self.k, -(q_start + q_len - 1)) + self.k  # most negative offset j - i
            hi = max(min(self.k, k_len - 1 - q_start), -self.k) + self.k  # most positive

        def make() -> Tensor:
            i = torch.arange(q_start, q_start + q_len, device=device).unsqueeze(1)
            j = torch.arange(k_len, device=device).unsqueeze(0)
            return (j - i).clamp(-self.k, self.k) + (self.k - lo)  # (Nq, Nk)

        return self._indices.get((q_start, q_len, k_len, device, lo), make), lo, hi

    def score_bias(self, q: Tensor, q_start: int, k_len: int) -> Tensor | None:
        if self.edge_keys is None:
            return None
        B, H, Nq, _ = q.shape
        index, lo, hi = self._window_index(q_start, Nq, k_len, q.device)
        edge = self.edge_keys[..., lo : hi + 1, :].to(q.dtype)  # type: ignore[index]
        if self.share_heads:
            per_bucket = q @ edge.t()  # (B, H, Nq, hi - lo + 1)
        else:  # einsum batches over heads; a broadcast matmul would copy the table B times
            per_bucket = torch.einsum("bhnd,hrd->bhnr", q, edge)
        return per_bucket.gather(-1, index.expand(B, H, Nq, k_len)) * self.scale  # (B, H, Nq, Nk)

    def value_term(self, weights: Tensor, q_start: int) -> Tensor:
        B, H, Nq, Nk = weights.shape
        index, lo, hi = self._window_index(q_start, Nq, Nk, weights.device)
        buckets = weights.new_zeros(B, H, Nq, hi - lo + 1)
        buckets = buckets.scatter_add(
            -1, index.expand(B, H, Nq, Nk), weights
        )  # (B, H, Nq, hi - lo + 1)
        edge = self.edge_values[..., lo : hi + 1, :].to(weights.dtype)  # type: ignore[index]
        if self.share_heads:
            return buckets @ edge  # (B, H, Nq, d)
        return torch.einsum("bhnr,hrd->bhnd", buckets, edge)


def _terms(enc: Any) -> tuple[bool, bool]:
    # By item: on a DictConfig `enc.keys` / `enc.values` are the mapping's methods, always
    # truthy, so attribute access would silently enable both terms.
    return bool(enc["keys"]), bool(enc["values"])


def _check(enc: Any, model: Any) -> None:
    if enc.k < 0:
        raise ConfigError(
            f"encoding.k={enc.k} is negative; the clipping distance must be >= 0 "
            f"(k=0 is legal: one bucket, no order information)"
        )
    if not any(_terms(enc)):
        raise ConfigError(
            "encoding.keys=false and encoding.values=false leave the relative encoding with "
            "no position term; that is encoding=none, or set one of them to true"
        )


# Training pairs hold at most data.max_len subwords plus EOS / BOS: offsets beyond that are
# never trained, and a huge k only allocates (2k + 1) vectors per head and layer that
# nothing reaches (k = 10^8 asks for tens of GB). Up to this many times the longest pair is
# allowed, so Table 2's k = 256 stays legal on the toy task (pairs of at most 65 positions).
MAX_K_PER_TRAINING_LENGTH = 4


def _check_data(enc: Any, data: Any) -> None:
    longest = data.max_len + 1
    if enc.k > MAX_K_PER_TRAINING_LENGTH * longest:
        raise ConfigError(
            f"encoding.k={enc.k} is far beyond any offset training sees (data.max_len="
            f"{data.max_len} subwords + EOS: {longest}); offsets past {longest} are never "
            f"trained, so use encoding.k <= {longest} (larger k computes the same in training) "
            f"or raise data.max_len; at most {MAX_K_PER_TRAINING_LENGTH * longest} is accepted"
        )


def _build(enc: Any, shape: AttentionShape) -> Iterator[RelativePositionBias]:
    keys, values = _terms(enc)
    for _ in range(shape.layers):  # lazily: each table is drawn just before its layer
        yield RelativePositionBias(shape.heads, shape.d_head, enc.k, keys, values, enc.share_heads)


register(
    EncodingMethod(
        "relative",
        "attention",
        _build,
        options=RelativeOptions,
        check=_check,
        check_data=_check_data,
        summary="`a^K` on the logits, `a^V` on the output, clipped at `k`",
    )
)
