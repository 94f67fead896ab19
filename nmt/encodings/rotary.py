"""Rotary position embedding (Su et al. 2021) on the queries and keys of self-attention.

`encoding=rotary`, and the evaluation-time length extensions `rotary_linear`, `rotary_ntk`,
`rotary_dynamic_linear`, `rotary_dynamic_ntk`: the scaling options change evaluation only,
so a trained rotary checkpoint can be re-scored with any of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
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
from nmt.errors import ConfigError

SCALINGS = ("none", "linear", "ntk", "dynamic_linear", "dynamic_ntk")


@dataclass
class RotaryOptions:
    rotary_base: float = 10000.0
    # none | linear (position interpolation) | ntk | dynamic_linear | dynamic_ntk;
    # evaluation only: training always rotates plainly
    rotary_scaling: str = "none"
    rotary_factor: float = 1.0  # linear, ntk: the fixed factor at every length
    # dynamic_*: the factor is max(1, N / rotary_train_len) for a sequence of N positions;
    # set it to the longest sequence seen in training (subwords + 1 for EOS / BOS)
    rotary_train_len: int = 0


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
        self,
        d_head: int,
        base: float,
        scaling: str = "none",
        factor: float = 1.0,
        train_len: int = 0,
    ) -> None:
        super().__init__()
        if d_head % 2:
            raise ConfigError(f"rotary positions need an even head size, got {d_head}")
        if scaling.startswith("dynamic") and train_len < 1:
            raise ConfigError(f"rotary scaling {scaling!r} needs train_len >= 1, got {train_len}")
        self.d_head, self.base, self.scaling, self.factor = d_head, base, scaling, factor
        self.train_len = train_len
        self._cos_sin = ShapeCache()

    @property
    def length_dependent(self) -> bool:
        """Whether the rotation depends on the sequence length (dynamic scaling, evaluation)."""
        return not self.training and self.scaling.startswith("dynamic")

    def _scale(self, total: int) -> float:
        if self.training or self.scaling == "none":
            return 1.0
        if self.length_dependent:
            return max(1.0, total / self.train_len)
        return self.factor

    def _angles(
        self, start: int, length: int, scale: float, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:

        def make() -> Tensor:
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
            return torch.stack((angles.cos(), angles.sin())).to(device, dtype)  # (2, N, d/2)

        cos_sin = self._cos_sin.get((start, length, scale, device, dtype), make)
        return cos_sin[0], cos_sin[1]

    def positioned(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_start: int,
        cache: Any | None,
        key_padding_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        total: int | list[int] = q_start + q.size(2)
        if self.length_dependent and cache is None and key_padding_mask is not None:
            total = (~key_padding_mask).sum(-1).tolist()  # each sentence's own length
        q = self.rotate(q, q_start, total)
        if cache is not None and self.length_dependent:
            # The rotation changes as the output grows (dynamic scaling): the cache keeps raw
            # keys, and all of them are rotated anew at every step.
            k, v = cache.append(k, v)
            return q, self.rotate(k, 0, total), v
        k = self.rotate(k, q_start, total)
        if cache is not None:
            k, v = cache.append(k, v)
        return q, k, v

    def rotate(self, x: Tensor, start: int, total: int | list[int]) -> Tensor:
        """Rotate `x (B, H, N, d)` at positions start..; `total`: the sequence length so far,
        or each row's own length (the encoder, whose rows are padded to the longest)."""
        length = x.size(-2)
        if isinstance(total, list):  # given only under dynamic scaling
            # A factor per row: a short sentence padded to a long batch keeps its own (1).
            rows = [self._angles(start, length, self._scale(n), x.device, x.dtype) for n in total]
            cos = torch.stack([c for c, _ in rows]).unsqueeze(1)  # (B, 1, N, d/2)
            sin = torch.stack([s for _, s in rows]).unsqueeze(1)
        else:
            cos, sin = self._angles(
                start, length, self._scale(total), x.device, x.dtype
            )  # (N, d/2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def _check(enc: Any, model: Any) -> None:
    if enc.rotary_scaling not in SCALINGS:
        raise ConfigError(
            f"encoding.rotary_scaling={enc.rotary_scaling!r} is unknown; choose one of "
            f"{', '.join(SCALINGS)}"
        )
    if enc.rotary_factor < 1.0:
        raise ConfigError(f"encoding.rotary_factor={enc.rotary_factor} must be >= 1")
    if enc.rotary_scaling.startswith("dynamic") and enc.rotary_train_len < 1:
        raise ConfigError(
            f"encoding.rotary_scaling={enc.rotary_scaling} scales by the length past the "
            f"training length: set encoding.rotary_train_len to the longest training sequence "
            f"(subwords + 1), got {enc.rotary_train_len}"
        )
    if (model.d_model // model.heads) % 2 != 0:
        raise ConfigError(
            f"encoding=rotary needs an even head size, got d_model/heads="
            f"{model.d_model // model.heads}"
        )


def _build(enc: Any, shape: AttentionShape) -> Iterator[RotaryPositions]:
    for _ in range(shape.layers):
        yield RotaryPositions(
            shape.d_head,
            enc.rotary_base,
            enc.rotary_scaling,
            enc.rotary_factor,
            enc.rotary_train_len,
        )


register(
    EncodingMethod(
        "rotary",
        "attention",
        _build,
        options=RotaryOptions,
        evaluation_options=("rotary_scaling", "rotary_factor", "rotary_train_len"),
        check=_check,
        summary="rotates q and k",
    )
)
