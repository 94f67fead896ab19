"""Position encodings as plug-ins: one module per method, found and registered on import.

A method module defines its modules, its `encoding.*` options and their checks, and calls
`register(EncodingMethod(...))`; a yaml in `conf/encoding/` picks one method per side
(`input:` and `attention:`) and sets the options. Nothing outside this package names a
method: the config schema, the model, checkpoints, results and the report derive from
the functions below.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from dataclasses import field, make_dataclass
from typing import Any, get_type_hints

from nmt.encodings.base import (
    SIDE_KEYS,
    AttentionPositions,
    AttentionShape,
    EncodingMethod,
    InputPositions,
    all_methods,
    method,
    register,
    registered,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "SIDE_KEYS",
    "AttentionPositions",
    "AttentionShape",
    "EncodingMethod",
    "InputPositions",
    "all_methods",
    "architecture_options",
    "build_attention_positions",
    "build_input_positions",
    "check_encoding",
    "encoding_schema",
    "evaluation_options",
    "methods_of",
    "position_limit",
    "register",
    "registered",
    "used_options",
]


def encoding_schema() -> type:
    """The `encoding` config group's dataclass: the preset's `name`, the method of each side,
    and every registered method's options (one flat namespace, so `encoding.k=4` works)."""
    specs: list[tuple[str, Any, Any]] = [
        ("name", str, field(default="relative")),
        ("input", str, field(default="none")),
        ("attention", str, field(default="relative")),
    ]
    for m in all_methods():
        if m.options is None:
            continue
        types, defaults = get_type_hints(m.options), m.option_defaults()
        for name in m.option_names:
            specs.append((name, types[name], field(default=defaults[name])))
    return make_dataclass("EncodingConfig", specs)


def methods_of(enc: Any) -> tuple[EncodingMethod, EncodingMethod]:
    """(input method, attention method) an encoding config selects; `ConfigError` if unknown."""
    return method("input", enc["input"]), method("attention", enc["attention"])


def used_options(enc: Any) -> tuple[str, ...]:
    """The `encoding.*` options its two methods read (the others sit in the config unused)."""
    return tuple(o for m in methods_of(enc) for o in m.option_names)


def evaluation_options() -> tuple[str, ...]:
    """Options of any method that change evaluation only, never the weights."""
    return tuple(o for m in all_methods() for o in m.evaluation_options)


def architecture_options(enc: Any) -> tuple[str, ...]:
    """The keys that define what the encoding computes: its sides and their weight-defining
    options (two checkpoints that differ in one of them cannot be averaged or resumed)."""
    evaluation = set(evaluation_options())
    return (*SIDE_KEYS, *(o for o in used_options(enc) if o not in evaluation))


def check_encoding(enc: Any, model: Any, data: Any | None = None) -> None:
    """Raise one `ConfigError` naming the first bad encoding value (method checks included;
    those against the data config when `data` is given)."""
    for m in methods_of(enc):
        if m.check is not None:
            m.check(enc, model)
        if m.check_data is not None and data is not None:
            m.check_data(enc, data)


def position_limit(enc: Any) -> int | None:
    """The longest sequence (positions) the input side can embed; None: any length."""
    m = method("input", enc["input"])
    return m.position_limit(enc) if m.position_limit is not None else None


def build_input_positions(enc: Any, d_model: int) -> InputPositions | None:
    """The embedding-side term of an encoding, or None."""
    return method("input", enc["input"]).build(enc, d_model)


def build_attention_positions(
    enc: Any, shape: AttentionShape
) -> Iterator[AttentionPositions | None]:
    """The self-attention term of each layer of one stack (the same object where shared),
    made as the layers are: a method that builds lazily draws each layer's weights in layer
    order, interleaved with the layer's own, so a seed gives the same model whatever else
    the registry holds."""
    built = 0
    for positions in method("attention", enc["attention"]).build(enc, shape):
        built += 1
        yield positions
    if built != shape.layers:
        raise ValueError(
            f"encoding.attention={enc['attention']} built {built} layers "
            f"for a stack of {shape.layers}"
        )
