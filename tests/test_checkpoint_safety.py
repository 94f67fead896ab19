"""Loading a checkpoint never runs code: a file whose pickle names a function is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import load_checkpoint, save_checkpoint
from nmt.config import compose, to_container
from nmt.errors import CheckpointError
from nmt.model import build_model


class RunsACommand:
    """What a crafted checkpoint holds: unpickling it calls os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": RunsACommand(f"touch {marker}")}, evil)
    with pytest.raises(CheckpointError, match=r"refused to load .*would run code.*system"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_nmt_translate_refuses_it_with_one_line_and_status_2(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": RunsACommand(f"touch {marker}")}, evil)
    out = subprocess.run(
        [sys.executable, "-m", "nmt.translate", str(evil)],
        input="hello\n",
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "refused to load" in out.stderr
    assert not marker.exists()


def test_a_training_checkpoint_loads_without_unpickling_code(tmp_path: Path) -> None:
    """Everything a training checkpoint holds, RNG states included, is plain data."""
    from nmt.training_state import rng_state

    cfg = compose(["model=tiny"])
    model = build_model(cfg, vocab_size=30)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.tensor([[5, 3]]), torch.tensor([[2, 6]])).sum().backward()
    optimizer.step()
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "config": to_container(cfg),
            "vocab_model": b"spm",
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "progress": {"step": 1},
        },
    )
    state = load_checkpoint(path)
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    assert state["optimizer"]["state"]


def test_a_truncated_checkpoint_is_reported_as_unreadable(tmp_path: Path) -> None:
    cfg = compose(["model=tiny"])
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": build_model(cfg, 30).state_dict(), "config": to_container(cfg)})
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="is not readable"):
        load_checkpoint(path)
