"""Checkpoint averaging: the mean of the parameters, and refusal of other architectures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nmt.average import main
from nmt.checkpoint import (
    CheckpointError,
    average_checkpoints,
    load_checkpoint,
    numbered_checkpoints,
    save_checkpoint,
)
from nmt.config import compose, to_container
from nmt.model import build_model

VOCAB = 50


def write(path: Path, *overrides: str, seed: int = 0, fingerprint: str = "v1") -> Path:
    torch.manual_seed(seed)
    cfg = compose(["model=tiny", *overrides])
    model = build_model(cfg, VOCAB)
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "config": to_container(cfg),
            "vocab_model": b"spm",
            "vocab_fingerprint": fingerprint,
            "step": seed,
        },
    )
    return path


def test_the_average_is_the_mean_of_every_parameter(tmp_path) -> None:
    paths = [write(tmp_path / f"checkpoint_{i}.pt", seed=i) for i in range(3)]
    states = [load_checkpoint(p)["model"] for p in paths]
    avg = average_checkpoints(paths)
    assert set(avg["model"]) == set(states[0])
    for key, value in avg["model"].items():
        expected = sum(s[key].double() for s in states) / 3
        assert value.dtype == states[0][key].dtype
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
    assert not torch.equal(avg["model"]["embedding.weight"], states[0]["embedding.weight"])
    assert avg["averaged_from"] == [str(p) for p in paths]
    assert avg["vocab_model"] == b"spm"


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["model.d_model=32"], "model.d_model: 64 != 32"),
        (["encoding.k=4"], "encoding.k: 16 != 4"),
        (["encoding=rotary"], "encoding.name: relative != rotary"),
        (["encoding=learned", "encoding.max_len=512"], "encoding.max_len: 1024 != 512"),
    ],
)
def test_a_different_architecture_is_refused_naming_the_key(tmp_path, overrides, named) -> None:
    a = write(tmp_path / "a.pt", *(["encoding=learned"] if "encoding=learned" in overrides else []))
    b = write(tmp_path / "b.pt", *overrides)
    with pytest.raises(CheckpointError, match="different architectures") as err:
        average_checkpoints([a, b])
    assert named in str(err.value)


def test_same_parameters_but_other_encoding_is_refused(tmp_path) -> None:
    # absolute and none have identical parameter sets; their average would mean nothing.
    a = write(tmp_path / "a.pt", "encoding=absolute")
    b = write(tmp_path / "b.pt", "encoding=none")
    with pytest.raises(CheckpointError, match="encoding.name: absolute != none"):
        average_checkpoints([a, b])


def test_dropout_may_differ_but_the_vocabulary_may_not(tmp_path) -> None:
    a = write(tmp_path / "a.pt")
    average_checkpoints([a, write(tmp_path / "b.pt", "model.dropout=0.3", seed=1)])
    # neither the initialisation nor an unused learned-table size changes the parameters
    d = write(tmp_path / "d.pt", "model.init_std=0.02", "encoding.max_len=256", seed=2)
    average_checkpoints([a, d])
    with pytest.raises(CheckpointError, match="different vocabularies"):
        average_checkpoints([a, write(tmp_path / "c.pt", fingerprint="v2")])


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        average_checkpoints([write(tmp_path / "a.pt"), tmp_path / "gone.pt"])


def test_nmt_average_takes_the_last_n_numbered_checkpoints_in_step_order(tmp_path, capsys) -> None:
    for step in (2, 9, 10):
        write(tmp_path / f"checkpoint_{step}.pt", seed=step)
    assert [p.name for p in numbered_checkpoints(tmp_path)] == [
        "checkpoint_2.pt",
        "checkpoint_9.pt",
        "checkpoint_10.pt",
    ]
    out = tmp_path / "avg.pt"
    assert main(["--run", str(tmp_path), "--last", "2", "-o", str(out)]) == 0
    avg = load_checkpoint(out)
    assert [Path(p).name for p in avg["averaged_from"]] == ["checkpoint_9.pt", "checkpoint_10.pt"]
    assert main([str(tmp_path / "nope.pt"), "-o", str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


SAVE_LOOP = """
import sys, torch
from nmt.checkpoint import save_checkpoint
path = sys.argv[1]
state = {"model": {"w": torch.randn(8_000_000)}, "config": {}}
i = 0
while True:  # nothing but saves: a kill always lands inside one
    i += 1
    save_checkpoint(path, {**state, "step": i})
    print(i, flush=True)
"""


def test_sigkill_in_the_middle_of_save_checkpoint_keeps_the_previous_file(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from nmt.checkpoint import load_checkpoint, remove_partial_writes

    path = tmp_path / "checkpoint_last.pt"
    steps = []
    for delay in (0.05, 0.11, 0.17, 0.23, 0.29, 0.37, 0.43, 0.51):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True
        )
        proc.stdout.readline()  # the first save of this process is complete
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps.append(load_checkpoint(path)["step"])  # raises if the file is half-written
    assert all(s >= 1 for s in steps)
    remove_partial_writes(tmp_path)  # what the trainer does when it starts in a run directory
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("last", ["0", "-1"])
def test_last_below_one_is_refused(tmp_path, capsys, last) -> None:
    """--last 0 took every checkpoint ([-0:]) and --last -1 all but the oldest."""
    for step in (1, 2, 3):
        write(tmp_path / f"checkpoint_{step}.pt", seed=step)
    out = tmp_path / "avg.pt"
    assert main(["--run", str(tmp_path), "--last", last, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--last {last}: give how many of the newest checkpoints to average, at least 1" in err
    assert not out.exists()


def test_fewer_checkpoints_than_asked_are_averaged_and_said(tmp_path, capsys) -> None:
    write(tmp_path / "checkpoint_1.pt")
    assert main(["--run", str(tmp_path), "--last", "4", "-o", str(tmp_path / "avg.pt")]) == 0
    assert f"averaged 1 checkpoints into {tmp_path / 'avg.pt'} (--last 4, but " in (
        capsys.readouterr().err
    )


def test_a_directory_given_as_checkpoint_is_named_with_its_files(tmp_path) -> None:
    for step in (2, 10):
        write(tmp_path / f"checkpoint_{step}.pt", seed=step)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    message = str(err.value)
    assert f"checkpoint {tmp_path} is a directory" in message and "does not exist" not in message
    assert "(it holds checkpoint_10.pt, checkpoint_2.pt)" in message
    assert f"e.g. {tmp_path}/checkpoint_" in message


def test_bad_runs_inputs_and_outputs_are_one_message(tmp_path, capsys) -> None:
    a = write(tmp_path / "run" / "checkpoint_1.pt")
    write(tmp_path / "run" / "checkpoint_2.pt", seed=2)
    out = str(tmp_path / "avg.pt")
    cases = [
        (["--run", str(tmp_path / "nope"), "-o", out], "does not exist; give the run directory"),
        (["--run", str(a), "-o", out], f"--run {a} is not a directory"),
        (["--last", "2", str(a), "-o", out], "--last needs --run DIR"),
        (["-o", out], "give checkpoint files to average, or --run DIR"),
        ([str(a), str(a), "-o", out], f"{a} is given twice"),
        (["--run", str(a.parent), "-o", str(a)], f"-o {a} is one of the checkpoints"),
        (["--run", str(a.parent), "-o", str(tmp_path)], f"-o {tmp_path} is a directory"),
        (["--run", str(a.parent), "-o", str(a / "x.pt")], f"{a} is a file, not a directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in a.parent.iterdir()) == ["checkpoint_1.pt", "checkpoint_2.pt"]
    assert load_checkpoint(a)["step"] == 0, "the input is untouched"
