"""T5 relative position buckets (Raffel et al. 2020, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer", section 2.1).

`encoding=t5`. No position is added to the embeddings; each self-attention logit gets a
learned scalar per head, looked up by the bucket of the relative position j - i:

    e_ij = q_i . k_j / sqrt(d_head) + b_h[bucket(j - i)].

Buckets are exact for small offsets and logarithmically wider up to `t5_max_distance`,
beyond which all offsets share the last bucket. The encoder is bidirectional (half the
buckets for keys after the query, half for the rest); the decoder's self-attention is
unidirectional (all buckets for keys at or before the query; later keys are masked). As in
T5 the table is shared by all layers of a stack (`t5_share_layers=false`: one per layer).

Scaling: T5 itself scales no logit (its query initialisation absorbs 1/sqrt(d)). Here the
content term keeps the Transformer's 1/sqrt(d_head) and the bias is added in logit units,
undivided, as T5 adds it.
"""

from __future__ import annotations

import math
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
class T5Options:
    t5_num_buckets: int = 32  # buckets per stack (the encoder splits them by direction)
    t5_max_distance: int = 128  # offsets at or beyond it share the last bucket
    t5_share_layers: bool = True  # one table per stack as in T5; false: one per layer


def relative_position_bucket(
    relative_position: Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """T5's bucket of each relative position j - i (long in, long out, same shape).

    Offsets below max_exact (half the buckets of a direction) get a bucket each; larger ones
    get max_exact + floor(log(n / max_exact) / log(max_distance / max_exact)
    * (buckets - max_exact)), capped at the last bucket. The logarithm runs in float32 as in
    T5's own implementations, so the bucket edges are theirs.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets  # keys after query
        n = relative_position.abs()
    else:
        n = (-relative_position).clamp(min=0)  # distance into the past; later keys -> 0
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # Clamped below at max_exact: the log is only taken (and used) where n >= max_exact.
    scaled = torch.log(n.clamp(min=max_exact).float() / max_exact)
    scaled = scaled / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = (max_exact + scaled.long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, n, large)


class T5RelativeBias(AttentionPositions):
    """The learned bias b_h[bucket(j - i)] of self-attention, `(1, H, Nq, Nk)`."""

    def __init__(
        self, heads: int, num_buckets: int, max_distance: int, bidirectional: bool, std: float
    ) -> None:
        super().__init__()
        self.heads, self.num_buckets, self.max_distance = heads, num_buckets, max_distance
        self.bidirectional = bidirectional
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)  # (buckets, H)
        # Normal with std d_model^-0.5, as the Hugging Face T5 port initialises it: small next
        # to the content logits at the start, different per head and bucket.
        nn.init.normal_(self.relative_attention_bias.weight, std=std)
        self._indices = ShapeCache()

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}, bidirectional={self.bidirectional}"
        )

    def bucket_index(self, q_start: int, q_len: int, k_len: int, device: torch.device) -> Tensor:
        """bucket(j - i) for queries q_start.. and keys 0..; `(Nq, Nk)` long."""

        def make() -> Tensor:
            i = torch.arange(q_start, q_start + q_len, device=device).unsqueeze(1)
            j = torch.arange(k_len, device=device).unsqueeze(0)
            return relative_position_bucket(
                j - i, self.bidirectional, self.num_buckets, self.max_distance
            )  # (Nq, Nk)

        return self._indices.get((q_start, q_len, k_len, device), make)

    def score_bias(self, q: Tensor, q_start: int, k_len: int) -> Tensor:
        q_len = q.size(2)
        index = self.bucket_index(q_start, q_len, k_len, q.device)
        table = self.relative_attention_bias.weight.to(q.dtype).t()  # (H, buckets)
        # index_select along the buckets gives (H, Nq * Nk) laid out as the logits are.
        bias = table.index_select(1, index.reshape(-1))
        return bias.view(1, self.heads, q_len, k_len)  # (1, H, Nq, Nk), broadcast over B


def _check(enc: Any, model: Any) -> None:
    buckets, distance = enc["t5_num_buckets"], enc["t5_max_distance"]
    if buckets < 4 or buckets % 2:
        raise ConfigError(
            f"encoding.t5_num_buckets={buckets} must be even and >= 4: the encoder splits the "
            f"buckets by direction, and each direction needs exact and logarithmic ones "
            f"(T5 uses 32)"
        )
    if distance < 1 or distance <= buckets // 2:
        raise ConfigError(
            f"encoding.t5_max_distance={distance} must exceed the exact buckets of the decoder "
            f"(t5_num_buckets/2 = {buckets // 2}), or the logarithmic buckets run backwards; "
            f"raise it or lower encoding.t5_num_buckets (T5 uses 128 with 32 buckets)"
        )


def _build(enc: Any, shape: AttentionShape) -> list[T5RelativeBias]:
    def make() -> T5RelativeBias:
        return T5RelativeBias(
            shape.heads,
            enc["t5_num_buckets"],
            enc["t5_max_distance"],
            bidirectional=not shape.causal,
            std=(shape.heads * shape.d_head) ** -0.5,
        )

    if enc["t5_share_layers"]:
        return [make()] * shape.layers  # the same module: one table for the stack, as in T5
    return [make() for _ in range(shape.layers)]


register(
    EncodingMethod(
        "t5",
        "attention",
        _build,
        options=T5Options,
        check=_check,
        summary="learned scalar per head and log-spaced bucket of `j - i` on the logits",
    )
)
