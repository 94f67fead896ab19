"""Checkpoints written before `encoding.input` / `encoding.attention` existed still load,
compute the same function, and count as the same architecture for resume and averaging."""

from __future__ import annotations

import pytest
import torch

from nmt.checkpoint import architecture_differences, checkpoint_config
from nmt.config import compose, to_container
from nmt.model import build_model
from nmt.presets import training_presets

# The encoding keys of the last version without the two sides.
OLD_ENCODING_KEYS = (
    "name",
    "k",
    "keys",
    "values",
    "share_heads",
    "max_len",
    "rotary_base",
    "rotary_scaling",
    "rotary_factor",
    "rotary_train_len",
)
# Presets that existed then.
OLD_PRESETS = (
    "absolute",
    "learned",
    "relative",
    "relative_keys",
    "relative_values",
    "combined",
    "rotary",
    "none",
)


# Train and decode keys added since; a checkpoint written before them has none.
NEWER_TRAIN_KEYS = ("loss_chunk_tokens",)
NEWER_DECODE_KEYS = ("unk_penalty", "eos_rule")


def old_config(cfg) -> dict:
    config = to_container(cfg)
    config["encoding"] = {k: v for k, v in config["encoding"].items() if k in OLD_ENCODING_KEYS}
    for section, newer in (("train", NEWER_TRAIN_KEYS), ("decode", NEWER_DECODE_KEYS)):
        config[section] = {k: v for k, v in config[section].items() if k not in newer}
    return config


@pytest.mark.parametrize("preset", [p for p in training_presets() if p in OLD_PRESETS])
def test_an_old_checkpoint_config_builds_the_same_model(preset: str) -> None:
    cfg = compose(["model=tiny", f"encoding={preset}", "encoding.k=3", "model.dropout=0.0"])
    torch.manual_seed(1)
    model = build_model(cfg, vocab_size=30).eval()
    state = {"model": model.state_dict(), "config": old_config(cfg)}
    assert "input" not in state["config"]["encoding"]

    loaded_cfg = checkpoint_config(state)
    assert loaded_cfg.train.loss_chunk_tokens == cfg.train.loss_chunk_tokens  # the default
    assert loaded_cfg.decode.eos_rule == cfg.decode.eos_rule
    assert loaded_cfg.encoding.input == cfg.encoding.input
    assert loaded_cfg.encoding.attention == cfg.encoding.attention
    loaded = build_model(loaded_cfg, vocab_size=30).eval()
    loaded.load_state_dict(state["model"])
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    tgt = torch.tensor([[2, 11, 12, 13], [2, 14, 15, 16]])
    with torch.no_grad():
        assert torch.equal(model(src, tgt), loaded(src, tgt))
    # Resuming an old run with this version is the same architecture.
    assert architecture_differences(state["config"], to_container(cfg)) == []


def test_an_old_config_still_differs_where_the_architecture_does() -> None:
    relative = old_config(compose(["model=tiny", "encoding=relative"]))
    combined = to_container(compose(["model=tiny", "encoding=combined"]))
    diffs = architecture_differences(relative, combined)
    assert "encoding.name: relative != combined" in diffs
    assert "encoding.input: none != sinusoidal" in diffs
