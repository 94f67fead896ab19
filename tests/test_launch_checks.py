"""A bad value on the nmt-train command line: one line, exit status 2, no run directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.launch_checks import job_overrides


def run_train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NMT_RUNS_DIR=str(tmp_path / "runs"))
    return subprocess.run(
        [sys.executable, "-m", "nmt.train", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["model.heads=3"], "model.d_model=64 is not divisible by model.heads=3"),
        (["encoding.k=-1"], "encoding.k=-1 is negative"),
        (["encoding.k=100000000"], "encoding.k=100000000 is far beyond any offset"),
        (["decode.beam=0"], "decode.beam=0 must be >= 1"),
        (["decode.max_len_b=-5"], "decode.max_len_b=-5 must be >= 0"),
        (["train.max_tokens=0"], "train.max_tokens=0 must be >= 1"),
        (["train.length_multiple=0"], "train.length_multiple=0 must be >= 1"),
        (
            ["train.max_tokens=600", "train.length_multiple=512"],
            r"train.length_multiple=512 pads every pair past train.max_tokens=600; use at most 300",
        ),
        (["train.loss_chunk_tokens=-1"], r"loss_chunk_tokens=-1 must be >= 0 \(0: the whole"),
        (["encoding.keys=false", "encoding.values=false"], "leave the relative encoding with"),
        (["encoding.name=../../x"], "encoding.name='../../x' is unknown"),
        (["encoding.kk=3"], "Could not override 'encoding.kk'"),
        (["-m", "encoding.k=4,-2"], "encoding.k=-2 is negative.*sweep job encoding.k=-2"),
        (["+experiment=encodings", "encoding=absolute,nope"], "Could not find 'encoding/nope'"),
    ],
)
def test_a_bad_value_is_one_line_before_any_run_directory(tmp_path, args, message) -> None:
    out = run_train(tmp_path, *args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("nmt-train: ")
    assert re.search(message, out.stderr), out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_a_sweep_is_expanded_into_its_jobs() -> None:
    jobs = job_overrides(["-m", "encoding=relative,absolute", "encoding.k=1,2", "seed=3"])
    assert sorted(map(sorted, jobs)) == sorted(
        sorted([f"encoding={e}", f"encoding.k={k}", "seed=3"])
        for e in ("relative", "absolute")
        for k in (1, 2)
    )


def test_an_experiment_sweep_counts_its_sweeper_params() -> None:
    jobs = job_overrides(["+experiment=encodings"])
    assert len(jobs) == 8 * 2  # its encodings times its seeds
    assert all("+experiment=encodings" in job for job in jobs)


def test_information_flags_run_no_job() -> None:
    assert job_overrides(["--cfg", "job"]) is None
    assert job_overrides(["--help"]) is None


def test_k_is_bounded_by_the_training_lengths_but_table_2_values_stay_legal() -> None:
    from nmt.config import ConfigError, compose
    from nmt.config_checks import validate

    validate(compose(["encoding.k=256"]))  # Table 2's largest k on the toy task
    with pytest.raises(ConfigError, match="encoding.k=261 is far beyond"):
        validate(compose(["encoding.k=261"]))  # toy pairs: at most 64 subwords + EOS
    validate(compose(["encoding.k=261", "data.max_len=100"]))


def test_resume_false_into_another_run_is_refused_before_hydra_writes_there(tmp_path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoint_last.pt").write_bytes(b"another run")
    (run / ".hydra" / "config.yaml").write_text("old: run\n")
    out = run_train(tmp_path, "train.resume=false", f"hydra.run.dir={run}")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "holds another run" in out.stderr and "hydra.run.dir=DIR" in out.stderr
    assert (run / ".hydra" / "config.yaml").read_text() == "old: run\n"


def test_a_learned_table_must_hold_the_lengths_padded_to_the_multiple() -> None:
    from nmt.config import ConfigError, compose
    from nmt.config_checks import validate

    # data.max_len=64: rows of up to 65 positions, 72 once rounded up to a multiple of 8.
    validate(compose(["encoding=learned", "encoding.max_len=65"]))
    with pytest.raises(ConfigError, match="raise encoding.max_len to at least 65"):
        validate(compose(["encoding=learned", "encoding.max_len=64"]))
    validate(compose(["encoding=learned", "encoding.max_len=72", "train.length_multiple=8"]))
    with pytest.raises(ConfigError, match="raise encoding.max_len to at least 72"):
        validate(compose(["encoding=learned", "encoding.max_len=66", "train.length_multiple=8"]))


def test_the_smallest_learned_table_validate_accepts_trains_the_longest_pairs(toy) -> None:
    """The bound `validate` enforces is the one training needs: a batch of the longest
    pairs the data filter keeps runs through a table of exactly that many positions."""
    from nmt.config import compose
    from nmt.config_checks import validate
    from nmt.data.batching import collate
    from nmt.model import build_model

    data, _ = toy
    split = data.splits["train"]
    longest = max(
        max(len(s) - 1, len(t)) for s, t in zip(split.src, split.tgt, strict=True)
    )  # src ends in EOS
    cfg = compose(
        ["encoding=learned", f"encoding.max_len={longest + 1}", f"data.max_len={longest}"]
    )
    validate(cfg)
    rows = sorted(
        range(len(split.src)), key=lambda i: -max(len(split.src[i]), len(split.tgt[i]) + 1)
    )
    batch = collate(split, rows[:4])
    assert max(batch.src.size(1), batch.tgt_in.size(1)) == longest + 1
    model = build_model(cfg, data.vocab.size)
    assert model(batch.src, batch.tgt_in).isfinite().all()
