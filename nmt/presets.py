"""The encoding presets (`conf/encoding/*.yaml`) as code sees them: which train different
models, and the sides of an older config that named only its preset."""

from __future__ import annotations

import functools
from typing import Any

from nmt.config import (
    EVALUATION_ENCODING_OPTIONS,
    EncodingConfig,
    compose,
    encoding_presets,
    to_container,
)
from nmt.encodings import SIDE_KEYS, architecture_options, used_options
from nmt.errors import ConfigError


def training_presets() -> tuple[str, ...]:
    """The encoding presets that train different models: presets that differ from an earlier
    one only in evaluation-only options (the rotary scalings) are left out."""
    seen, kept = set(), []
    for name in encoding_presets():
        enc = to_container(compose([f"encoding={name}"]).encoding)
        key = tuple((k, enc[k]) for k in ("name", *architecture_options(enc)))
        if key not in seen:
            seen.add(key)
            kept.append(name)
    return tuple(kept)


@functools.cache
def _preset_sides(name: str) -> dict[str, str]:
    preset = compose([f"encoding={name}"]).encoding
    return {key: preset[key] for key in SIDE_KEYS[1:]}


def complete_encoding(enc: dict[str, Any]) -> dict[str, Any]:
    """An encoding section as saved by any version, completed for this one.

    Configs written before the two sides existed name only their preset: its sides come from
    `conf/encoding/NAME.yaml`. Options the encoding does not use, and evaluation-only
    options, are filled in at their defaults; a missing option that defines weights is left
    missing, so building the model fails rather than guessing.
    """
    enc = dict(enc)
    if not all(key in enc for key in SIDE_KEYS[1:]):
        if enc.get("name") not in encoding_presets():
            raise ConfigError(
                f"encoding.name={enc.get('name')!r} has no preset in conf/encoding/ and the "
                f"config names no encoding.input / encoding.attention"
            )
        sides = _preset_sides(enc["name"])
        enc.update({key: sides[key] for key in SIDE_KEYS[1:] if key not in enc})
    used = set(used_options(enc)) - set(EVALUATION_ENCODING_OPTIONS)
    for key, value in to_container(EncodingConfig()).items():
        if key not in enc and key not in used:
            enc[key] = value
    return enc
