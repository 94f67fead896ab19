"""The interface every position encoding implements, and the registry that finds them.

An encoding answers two questions, each by a method registered under its own name:

1. `encoding.input`: what to add to token embeddings before the first layer
   (an `InputPositions`, or nothing);
2. `encoding.attention`: what to do inside self-attention (an `AttentionPositions` per
   layer, or nothing). Cross-attention gets no position term.

The two sides are chosen independently, so "sinusoidal + Shaw" is a preset (a yaml in
`conf/encoding/`), not a class. This module imports nothing from `nmt` but the errors, so
the config schema can be derived from the registered methods without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from nmt.errors import ConfigError

Side = Literal["input", "attention"]


class InputPositions(nn.Module):
    """Absolute positions added to `(B, N, D)` embeddings, starting at position `offset`."""

    # How many positions the table holds; None: any length.
    max_len: int | None = None

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class AttentionPositions(nn.Module):
    """What an encoding does inside one self-attention layer; the default does nothing.

    Shapes: q, k, v `(B, H, N, d)`; `q_start` is the absolute position of the first query
    (the cache length during incremental decoding); keys always start at position 0.
    """

    # Whether `value_term` adds to the output: the attention weights must then exist
    # explicitly, so the fused kernel cannot run.
    has_value_term = False

    def positioned(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_start: int,
        cache: Any | None,
        key_padding_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values to attend with, the new keys and values appended to the
        cache (an object with `append(k, v) -> (all_k, all_v)`) when there is one."""
        if cache is not None:
            k, v = cache.append(k, v)
        return q, k, v

    def score_bias(self, q: Tensor, q_start: int, k_len: int) -> Tensor | None:
        """Additive logits `(B or 1, H, Nq, Nk)` in the units of `q.k / sqrt(d)`: the encoding
        owns its scaling. None: no term on the logits. The caller only reads it (an encoding
        may return a cached tensor)."""
        return None

    def value_term(self, weights: Tensor, q_start: int) -> Tensor:
        """Term added to the attention output `(B, H, Nq, d)` from weights `(B, H, Nq, Nk)`."""
        raise NotImplementedError


# Elements a ShapeCache keeps by default (32 MiB of int64 indices): every layer and beam step
# of ordinary sentences, while a very long input does not stay in memory.
SHAPE_CACHE_ELEMENTS = 1 << 22


class ShapeCache:
    """Tensors that depend only on sequence lengths (a bias, a bucket index), kept for reuse
    up to `max_elements` in all: the layers of a stack and later batches of the same shape
    share them, while decoding (one new shape per step) and very long inputs do not pile up.

    Keys carry the inference-mode flag: a tensor made under torch.inference_mode() cannot
    take part in a pass autograd records. Under torch.compile nothing is cached: the
    lengths are symbolic there, and the compiled graph builds the tensor itself.
    """

    def __init__(self, max_elements: int = SHAPE_CACHE_ELEMENTS) -> None:
        self.max_elements = max_elements
        self._tensors: dict[Hashable, Tensor] = {}
        self._elements = 0

    def get(self, key: tuple[Hashable, ...], make: Callable[[], Tensor]) -> Tensor:
        """The tensor cached under `key`, or `make()`'s, cached when it fits."""
        if torch.compiler.is_compiling():
            return make()
        key = (*key, torch.is_inference_mode_enabled())
        tensor = self._tensors.get(key)
        if tensor is not None:
            return tensor
        tensor = make()
        if tensor.numel() > self.max_elements:
            return tensor  # one very long input: built per layer, freed after it
        if self._elements + tensor.numel() > self.max_elements:
            self._tensors.clear()
            self._elements = 0
        self._tensors[key] = tensor
        self._elements += tensor.numel()
        return tensor


@dataclass(frozen=True)
class AttentionShape:
    """What an attention-side method is built for: one stack of self-attention layers."""

    heads: int
    d_head: int
    layers: int
    causal: bool  # the decoder's self-attention (keys at or before the query)


@dataclass(frozen=True)
class EncodingMethod:
    """One position-encoding method, as its module registers it.

    `options` is a dataclass of its `encoding.*` keys (names unique across methods, with
    defaults); `evaluation_options` are those of them that change evaluation only, never
    the weights. `build` makes the modules: for the input side `build(enc, d_model)` ->
    `InputPositions | None`; for the attention side `build(enc, shape: AttentionShape)` ->
    an iterable of one `AttentionPositions | None` per layer (the same object in every layer
    shares it). A generator builds each layer's module just before the layer's own weights,
    so weights are drawn from the random stream in layer order.
    `check(enc, model)` raises `ConfigError` for bad values, `check_data(enc, data)` for
    values that do not fit the data config (lengths); `position_limit(enc)` is the longest
    sequence it can embed (None: any).
    """

    name: str
    side: Side
    build: Callable[..., Any]
    options: type | None = None
    evaluation_options: tuple[str, ...] = ()
    check: Callable[[Any, Any], None] | None = None
    check_data: Callable[[Any, Any], None] | None = None
    position_limit: Callable[[Any], int | None] | None = None
    summary: str = ""  # one line for the encodings table of `nmt-report` and the README

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.options)) if self.options else ()

    def option_defaults(self) -> dict[str, Any]:
        """Each option's default value."""
        out = {}
        for f in fields(self.options) if self.options else ():
            out[f.name] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        return out


_METHODS: dict[tuple[str, str], EncodingMethod] = {}
SIDE_KEYS = ("name", "input", "attention")  # encoding.* keys that are not a method's options


def register(method: EncodingMethod) -> EncodingMethod:
    """Add a method to the registry; its option names must be new (one flat `encoding.*`)."""
    key = (method.side, method.name)
    if key in _METHODS and _METHODS[key] is not method:
        raise ValueError(f"two {method.side} position methods are named {method.name!r}")
    taken = {o: m for m in _METHODS.values() for o in m.option_names}
    for option in method.option_names:
        owner = taken.get(option)
        if option in SIDE_KEYS or (owner is not None and owner.name != method.name):
            raise ValueError(
                f"encoding.{option} of {method.name!r} is already an option of "
                f"{owner.name if owner else 'every encoding'!r}"
            )
    unknown = set(method.evaluation_options) - set(method.option_names)
    if unknown:
        raise ValueError(f"{method.name}: evaluation options {sorted(unknown)} are not options")
    _METHODS[key] = method
    return method


def registered(side: Side) -> dict[str, EncodingMethod]:
    """The methods of one side by name, sorted."""
    return {n: m for (s, n), m in sorted(_METHODS.items()) if s == side}


def method(side: Side, name: str) -> EncodingMethod:
    """The registered method, or a `ConfigError` listing the choices."""
    found = _METHODS.get((side, name))
    if found is None:
        raise ConfigError(
            f"encoding.{side}={name!r} is unknown; choose one of {', '.join(registered(side))}"
        )
    return found


def all_methods() -> list[EncodingMethod]:
    return [_METHODS[key] for key in sorted(_METHODS)]
