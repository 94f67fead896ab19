"""Multi-head attention: scores, the position term of `nmt.encodings`, masks, and a KV cache.

Two paths compute the same function:

* fused: `F.scaled_dot_product_attention`, usable whenever the position term is at most an
  additive bias on the logits;
* explicit: softmax(q k^T / sqrt(d) + bias), then the encoding's value term, needed when
  the weights themselves enter the output (Shaw's a^V, eq. 3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.dropout import dropout as apply_dropout
from nmt.encodings import AttentionPositions


class KeyValueCache:
    """Keys and values `(B, H, T, d)` of one attention layer during incremental decoding.

    `length` is the number of cached positions, i.e. the position of the next query
    (the relative index uses it as i; "the last key" would be wrong before the append).
    """

    def __init__(self) -> None:
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.size(2)

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        if self.keys is None:
            # Contiguous, as every later cat or reorder returns: one memory layout for all
            # steps (a compiled decoder step recompiles for every new layout).
            self.keys, self.values = keys.contiguous(), values.contiguous()
        else:
            self.keys = torch.cat((self.keys, keys), dim=2)
            self.values = torch.cat((self.values, values), dim=2)  # type: ignore[arg-type]
        return self.keys, self.values  # type: ignore[return-value]

    def reorder(self, indices: Tensor) -> None:
        """Keep batch rows `indices` (beam re-ranking, finished sentences leaving)."""
        if self.keys is not None:
            self.keys = self.keys.index_select(0, indices)
            self.values = self.values.index_select(0, indices)  # type: ignore[union-attr]


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over `heads` heads, with an optional position term."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        dropout: float = 0.0,
        positions: AttentionPositions | None = None,
    ) -> None:
        super().__init__()
        self.heads, self.d_head = heads, d_model // heads
        self.scale = 1.0 / math.sqrt(self.d_head)
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.positions = positions
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _split(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.heads, self.d_head).transpose(1, 2)  # (B, H, N, d)

    def forward(
        self,
        query: Tensor,
        memory: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        cache: KeyValueCache | None = None,
    ) -> Tensor:
        """Self-attention when `memory` is None, else cross-attention to `memory`.

        query `(B, Nq, D)`, memory `(B, Nk, D)`, key_padding_mask `(B, Nk)` True at padding.
        With a cache, self-attention appends the new keys; cross-attention projects the
        memory once and reuses it.
        """
        q = self._split(self.q_proj(query))  # (B, H, Nq, d)
        q_start = 0
        if memory is None:  # self-attention
            q_start = cache.length if cache is not None else 0
            k, v = self._split(self.k_proj(query)), self._split(self.v_proj(query))
            if self.positions is not None:
                q, k, v = self.positions.positioned(q, k, v, q_start, cache, key_padding_mask)
            elif cache is not None:
                k, v = cache.append(k, v)
        elif cache is not None and cache.keys is not None:
            k, v = cache.keys, cache.values  # type: ignore[assignment]
        else:
            k, v = self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
            if cache is not None:
                cache.append(k, v)

        out = self._attend(q, k, v, q_start, key_padding_mask, causal)  # (B, H, Nq, d)
        B, _, Nq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, Nq, self.heads * self.d_head))

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_start: int,
        key_padding_mask: Tensor | None,
        causal: bool,
    ) -> Tensor:
        Nq, Nk = q.size(2), k.size(2)
        pos = self.positions
        dropout = self.dropout if self.training else 0.0
        bias = pos.score_bias(q, q_start, Nk) if pos is not None else None
        mask = _blocked_positions(key_padding_mask, causal, q_start, Nq, Nk, q.device)

        if (pos is None or not pos.has_value_term) and _fused_kernel_pays(
            q, bias is not None, dropout
        ):
            if bias is None and mask is None:
                return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
            if bias is None and causal and key_padding_mask is None and q_start == 0 and Nq == Nk:
                return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
            if bias is None:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=~mask, dropout_p=dropout)
            if mask is not None:
                bias = bias.masked_fill(mask, float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)

        # Explicit path: the weights are needed for the a^V term (eq. 3), or it is the faster one.
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(self.scale)  # (B, H, Nq, Nk)
        if bias is not None:
            scores = scores.add_(bias)
        if mask is not None:
            scores = scores.masked_fill_(mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if dropout > 0.0:
            weights = apply_dropout(weights, dropout, True)
        out = torch.matmul(weights, v)
        return (
            out + pos.value_term(weights, q_start)
            if pos is not None and pos.has_value_term
            else out
        )


def _fused_kernel_pays(q: Tensor, has_bias: bool, dropout: float) -> bool:
    """Whether `scaled_dot_product_attention` beats the explicit softmax(q k^T) v here.

    On GPUs always (fused kernels, O(N) memory). On the CPU it loses to the explicit path
    with dropout, with a float bias and in bf16, and wins only in fp32 with neither (the
    measurement is in docs/benchmarks.md, "Attention kernels").
    """
    if q.device.type != "cpu":
        return True
    return not has_bias and dropout == 0.0 and q.dtype == torch.float32


def _blocked_positions(
    key_padding_mask: Tensor | None,
    causal: bool,
    q_start: int,
    q_len: int,
    k_len: int,
    device: torch.device,
) -> Tensor | None:
    """Boolean `(B or 1, 1, Nq, Nk)` mask, True where a query may not look."""
    mask = None
    if causal and k_len > q_start + 1:  # else every key is at or before every query
        i = torch.arange(q_start, q_start + q_len, device=device).unsqueeze(1)
        j = torch.arange(k_len, device=device).unsqueeze(0)
        mask = (j > i).view(1, 1, q_len, k_len)
    if key_padding_mask is not None:
        pad = key_padding_mask.view(key_padding_mask.size(0), 1, 1, k_len)
        mask = pad if mask is None else (mask | pad)
    return mask
