"""Sinusoidal absolute positions added to the embeddings (Vaswani et al. 2017, section 3.5)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nmt.encodings.base import EncodingMethod, InputPositions, register

SINUSOID_BASE = 10000.0  # the paper's wavelength base


class SinusoidalPositions(InputPositions):
    """PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d))."""

    def __init__(self, d_model: int, base: float = SINUSOID_BASE, initial_len: int = 1024) -> None:
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


def _build(enc: Any, d_model: int) -> SinusoidalPositions:
    return SinusoidalPositions(d_model)


register(EncodingMethod("sinusoidal", "input", _build, summary="sinusoid table"))
