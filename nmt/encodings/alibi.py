"""ALiBi: attention with linear biases (Press, Smith & Lewis 2022, "Train Short, Test Long").

`encoding=alibi`. No position is added to the embeddings; every self-attention logit gets a
penalty linear in the distance between query i and key j (section 3, figure 3):

    softmax(q_i K^T + m_h * [-(i - 1), ..., -2, -1, 0]),

i.e. a bias -m_h * (i - j) for the keys j <= i the causal decoder sees. The encoder looks
both ways and takes the symmetric form -m_h * |i - j|; on the keys the decoder sees the
two are equal, so one formula serves both stacks. The symmetric form cannot tell a key d
to the left from one d to the right: the encoder sees distance, not direction. The slopes
m_h are a fixed geometric sequence per head and nothing is learned. The content term
keeps its 1/sqrt(d_head); the bias is added to the scaled logits as it stands, undivided,
as in the authors' implementation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from nmt.encodings.base import (
    AttentionPositions,
    AttentionShape,
    EncodingMethod,
    ShapeCache,
    register,
)

# Elements of the bias tensors a module keeps (64 MiB in float32): enough for every layer and
# beam step of ordinary sentences, while a very long input does not stay in memory.
_CACHE_ELEMENTS = 1 << 24


def alibi_slopes(heads: int) -> list[float]:
    """The paper's head slopes (section 3): m_h = 2^(-8h/n), h = 1..n, for n a power of two.

    For other n the authors' rule: the slopes of the closest lower power of two p, then
    every other slope of 2p (2^(-8h/(2p)) for h = 1, 3, 5, ...) until there are n.
    """
    if heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got {heads}")
    p = 2 ** math.floor(math.log2(heads))
    slopes = [2.0 ** (-8.0 * h / p) for h in range(1, p + 1)]
    slopes += [2.0 ** (-8.0 * h / (2 * p)) for h in range(1, 2 * p, 2)][: heads - p]
    return slopes


class ALiBiBias(AttentionPositions):
    """The bias -m_h * |i - j| of one stack's self-attention, `(1, H, Nq, Nk)`.

    It has no parameters, so one object serves every layer of a stack, and a bias built for
    the first layer is reused by the others (and by later batches of the same shape).
    """

    def __init__(self, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.slopes = alibi_slopes(heads)
        self._biases = ShapeCache(_CACHE_ELEMENTS)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, causal={self.causal}"

    def score_bias(self, q: Tensor, q_start: int, k_len: int) -> Tensor:
        q_len = q.size(2)
        return self._biases.get(
            (q_start, q_len, k_len, q.device, q.dtype),
            lambda: self._build_bias(q_start, q_len, k_len, q.device, q.dtype),
        )

    def _build_bias(
        self, q_start: int, q_len: int, k_len: int, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        # float32 even for bf16 / fp16 logits (distances times slopes round once, at the end);
        # float64 only when asked for, since MPS has none.
        work = torch.float64 if dtype == torch.float64 else torch.float32
        i = torch.arange(q_start, q_start + q_len, device=device, dtype=work).unsqueeze(1)
        j = torch.arange(k_len, device=device, dtype=work).unsqueeze(0)
        distance = (i - j).abs()  # (Nq, Nk); keys after a causal query are masked anyway
        slopes = torch.tensor(self.slopes, device=device, dtype=work).view(1, self.heads, 1, 1)
        return (-slopes * distance).to(dtype)  # (1, H, Nq, Nk), broadcast over the batch


def _build(enc: Any, shape: AttentionShape) -> list[ALiBiBias]:
    # One object per stack: nothing is learned, and the layers share the cached bias.
    return [ALiBiBias(shape.heads, shape.causal)] * shape.layers


register(
    EncodingMethod(
        "alibi",
        "attention",
        _build,
        summary="fixed per-head linear distance penalty `-m_h |i - j|` on the logits",
    )
)
