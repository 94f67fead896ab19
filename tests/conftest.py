"""Shared fixtures: where the corpora beside the project are, the toy data and a tiny
random-weight checkpoint of it (the CLI tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cli_checkpoint import make_checkpoint

from nmt.config import compose
from nmt.data import prepare_data

REPO = Path(__file__).resolve().parent.parent

# Unit tests run tiny models: one thread is as fast, and immune to the OpenMP slowdown
# two threads suffer when another process shares a 2-core machine.
torch.set_num_threads(1)


def shared_data_dir() -> Path | None:
    """NMT_DATA_DIR if set, else the workplace's ../shared/data beside the repository."""
    env = os.environ.get("NMT_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture
def multi30k_dir() -> Path:
    base = shared_data_dir()
    if base is None or not (base / "multi30k" / "train.en.gz").exists():
        pytest.skip("Multi30k not found: set NMT_DATA_DIR to a directory holding multi30k/")
    return base / "multi30k"


@pytest.fixture
def wmt14_dir() -> Path:
    base = shared_data_dir()
    if base is None or not (base / "wmt14" / "newstest2014.en").exists():
        pytest.skip("newstest2014 not found: set NMT_DATA_DIR to a directory holding wmt14/")
    return base / "wmt14"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """(prepared toy data, its config) with a small training split, cached in a temp dir."""
    cache = tmp_path_factory.mktemp("cache")
    cfg = compose([f"data.cache_dir={cache}", "data.toy.train_size=2000", "data.toy.test_size=40"])
    return prepare_data(cfg.data), cfg


@pytest.fixture(scope="session")
def ckpt(toy, tmp_path_factory) -> Path:
    data, cfg = toy
    return make_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_best.pt", cfg, data.vocab)
