"""Every experiment preset composes and validates for every value its sweep runs."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nmt.config import compose
from nmt.config_checks import validate

EXPERIMENT_DIR = Path(__file__).parents[1] / "conf" / "experiment"
EXPERIMENTS = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))


def sweep_points(name: str) -> list[list[str]]:
    """The override lists of the experiment's own multirun (one empty list without one)."""
    spec = OmegaConf.load(EXPERIMENT_DIR / f"{name}.yaml")
    params = OmegaConf.select(spec, "hydra.sweeper.params") or {}
    axes = [
        [f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()
    ]
    return [list(point) for point in itertools.product(*axes)]


def test_every_preset_is_found():
    assert {
        "clip_sweep",
        "kv_ablation",
        "encodings",
        "length_generalisation",
        "length_generalisation_multi30k",
        "multi30k_small",
        "shaw2018_base_en_de",
    } <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_preset_composes_and_validates_at_every_sweep_point(name, monkeypatch):
    monkeypatch.setenv("NMT_DATA_DIR", "/nonexistent")  # data.root of multi30k; never read here
    for point in sweep_points(name):
        cfg = compose([f"+experiment={name}", *point])
        validate(cfg)
        assert cfg.experiment == name


@pytest.mark.parametrize("name", ["length_generalisation", "length_generalisation_multi30k"])
def test_length_studies_put_the_first_bucket_at_the_training_length(name, monkeypatch):
    """Dynamic rotary scaling starts past the longest training sequence (tokens + EOS), and
    the first length bucket holds exactly the lengths seen in training."""
    monkeypatch.setenv("NMT_DATA_DIR", "/nonexistent")
    cfg = compose([f"+experiment={name}"])
    longest = cfg.data.toy.max_len if cfg.data.source == "toy" else cfg.data.max_len
    assert cfg.encoding.rotary_train_len == longest + 1
    assert cfg.decode.length_buckets[0] == longest
