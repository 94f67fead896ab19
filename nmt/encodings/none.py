"""No position information on either side: a bag-of-words control (`encoding=none`)."""

from __future__ import annotations

from typing import Any

from nmt.encodings.base import AttentionShape, EncodingMethod, register


def _no_input(enc: Any, d_model: int) -> None:
    return None


def _no_attention(enc: Any, shape: AttentionShape) -> list[None]:
    return [None] * shape.layers


register(EncodingMethod("none", "input", _no_input, summary="—"))
register(EncodingMethod("none", "attention", _no_attention, summary="—"))
