"""Learned absolute positions: one trained vector per position (Gehring et al. 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from nmt.encodings.base import EncodingMethod, InputPositions, register
from nmt.errors import ConfigError


@dataclass
class LearnedOptions:
    max_len: int = 1024  # positions in the table: longer sequences cannot be embedded


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


def _check(enc: Any, model: Any) -> None:
    if enc.max_len < 1:
        raise ConfigError(f"encoding.max_len={enc.max_len} must be >= 1")


register(
    EncodingMethod(
        "learned",
        "input",
        lambda enc, d_model: LearnedPositions(d_model, enc.max_len),
        options=LearnedOptions,
        check=_check,
        position_limit=lambda enc: enc.max_len,
        summary="trained table (`encoding.max_len`)",
    )
)
