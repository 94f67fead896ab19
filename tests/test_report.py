"""nmt-report: swept values become rows, seeds are averaged, unfinished runs are listed."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nmt.report import report
from nmt.results import MEASURES, measures


def fake_run(
    root: Path,
    name: str,
    k: int,
    seed: int,
    test_bleu: float | None,
    failed: bool = False,
    train: dict | None = None,
    encoding: str = "relative",
    data: str = "toy",
    pair: tuple[str, str] = ("src", "tgt"),
    precision: str | None = None,
):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config = {
        "model": {"name": "tiny", "d_model": 64},
        "encoding": {"name": encoding, "k": k, "keys": True, "values": True},
        "data": {"name": data, "src": pair[0], "tgt": pair[1], "cache_dir": f"/somewhere/{name}"},
        "seed": seed,
        **({"train": train} if train else {}),
    }
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if failed:
        failure = {"error": "TrainingError: the loss became nan"}
        (run / "failed.json").write_text(json.dumps(failure))
    elif test_bleu is None:
        (run / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 40}) + "\n")
    else:
        by_length = [
            {"bucket": "1-10", "bleu": test_bleu + 1},
            {"bucket": "11-20", "bleu": test_bleu - 1},
        ]
        results = {
            "valid": {"bleu": test_bleu + 0.5, "chrf": 50.0},
            "test": {"bleu": test_bleu, "chrf": 60.0, "by_length": by_length},
            "steps": 100,
            "train_tokens_per_s": 1000.0,
            "parameters": 1234,
            "seed": seed,
            **({"precision": precision} if precision else {}),
        }
        (run / "results.json").write_text(json.dumps(results))


def test_report_rows_are_the_swept_values_averaged_over_seeds(tmp_path) -> None:
    bleu = {(0, 1): 10.0, (0, 2): 12.0, (2, 1): 30.0, (2, 2): 31.0, (16, 1): 29.0, (16, 2): 33.0}
    for n, ((k, seed), value) in enumerate(sorted(bleu.items())):
        fake_run(tmp_path, f"{n}_k={k}_seed={seed}", k, seed, value)
    fake_run(tmp_path, "9_k=64", 64, 1, None)  # still running
    fake_run(tmp_path, "10_k=256", 256, 1, None, failed=True)

    out = report([tmp_path], tmp_path / "report")
    assert out["keys"] == ["encoding.k"]  # cache_dir differs too, but is not a variable
    rows = {row["encoding.k"]: row for row in out["rows"]}
    assert sorted(rows) == [0, 2, 16]
    assert rows[16]["test_bleu"] == pytest.approx(31.0)
    assert rows[16]["test_bleu_std"] == pytest.approx(statistics.stdev([29.0, 33.0]))
    assert rows[2]["seeds"] == [1, 2]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "6 of 8 runs finished" in text
    assert "| toy src-tgt | 16 | 31.50 ± 2.83 | 31.00 ± 2.83 |" in text  # rows name the corpus
    assert "| 9_k=64 | unfinished | 64 | last logged step 40 |" in text
    assert "| 10_k=256 | failed | 256 | TrainingError: the loss became nan |" in text
    assert "31.00 ± 2.83" in text
    assert "| data | k | 1-10 | 11-20 |" in text  # BLEU by length
    assert "| 16 | 32.0 | 30.0 |" in text
    csv_lines = (tmp_path / "report" / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("data,encoding.k,runs,seeds")
    assert (tmp_path / "report" / "bleu_vs_k.png").stat().st_size > 1000
    assert (tmp_path / "report" / "bleu_by_length.png").stat().st_size > 1000
    assert (tmp_path / "report" / "bleu_by_row.png").stat().st_size > 1000
    assert sorted(out["files"]) == ["bleu_by_length", "bleu_by_row", "bleu_vs_k", "csv", "markdown"]


def test_a_config_key_newer_than_some_runs_is_not_a_variable(tmp_path) -> None:
    """Runs made before a schema key existed lack it: that alone does not make it a row."""
    fake_run(tmp_path, "old_k=2", 2, 1, 30.0)
    fake_run(tmp_path, "new_k=2", 2, 2, 31.0, train={"new_option": 120})
    fake_run(tmp_path, "new_k=4", 4, 1, 35.0, train={"new_option": 120})
    assert report([tmp_path], tmp_path / "r1")["keys"] == ["encoding.k"]
    fake_run(tmp_path, "new_k=8", 8, 1, 36.0, train={"new_option": 60})
    assert report([tmp_path], tmp_path / "r2")["keys"] == ["encoding.k", "train.new_option"]


def test_auto_precision_is_read_as_what_it_resolved_to(tmp_path) -> None:
    """train.precision=auto ran fp32 on one machine and bf16 on another: two rows; an auto
    run that resolved to fp32 shares its row with an explicit fp32 run."""
    auto, fp32 = {"precision": "auto"}, {"precision": "fp32"}
    fake_run(tmp_path, "a", 2, 1, 30.0, train=auto, precision="fp32")
    fake_run(tmp_path, "b", 2, 2, 31.0, train=fp32, precision="fp32")
    assert report([tmp_path], tmp_path / "r1")["keys"] == []
    fake_run(tmp_path, "c", 2, 1, 33.0, train=auto, precision="bf16")
    out = report([tmp_path], tmp_path / "r2")
    assert out["keys"] == ["train.precision"]
    rows = {row["train.precision"]: row for row in out["rows"]}
    assert rows["fp32"]["seeds"] == [1, 2] and rows["bf16"]["seeds"] == [1]


def test_options_an_encoding_does_not_use_define_no_row(tmp_path) -> None:
    """An absolute run's config still says k=16: the table shows "—" there, not a k."""
    fake_run(tmp_path, "a", 2, 1, 30.0)
    fake_run(tmp_path, "b", 4, 1, 35.0)
    fake_run(tmp_path, "c", 16, 1, 20.0, encoding="absolute")
    out = report([tmp_path], tmp_path / "r")
    assert out["keys"] == ["encoding.k", "encoding.name"]
    assert [(r["encoding.name"], r["encoding.k"]) for r in out["rows"]] == [
        ("absolute", None),
        ("relative", 2),
        ("relative", 4),
    ]
    assert "| — | absolute |" in (tmp_path / "r" / "report.md").read_text()


def test_every_row_names_its_language_pair(tmp_path) -> None:
    """Multi30k EN-DE and EN-FR share data.name: the pair tells their rows apart, also for
    a run known only by its results.json."""
    fake_run(tmp_path, "de1", 16, 1, 39.0, data="multi30k", pair=("en", "de"))
    fake_run(tmp_path, "de2", 16, 2, 40.0, data="multi30k", pair=("en", "de"))
    fake_run(tmp_path, "fr1", 16, 1, 55.0, data="multi30k", pair=("en", "fr"))
    bare = tmp_path / "fr2"
    bare.mkdir()
    record = {"data": "multi30k", "language_pair": "en-fr", "encoding": "relative", "k": 16}
    record |= {"seed": 2, "test": {"bleu": 57.0}, "model": "tiny"}
    (bare / "results.json").write_text(json.dumps(record))
    out = report([tmp_path], tmp_path / "r")
    assert "data.tgt" in out["keys"]
    rows = {row["data"]: row for row in out["rows"]}
    assert sorted(rows) == ["multi30k en-de", "multi30k en-fr"]
    assert rows["multi30k en-fr"]["seeds"] == [1, 2]
    assert rows["multi30k en-fr"]["test_bleu"] == pytest.approx(56.0)
    assert "| multi30k en-fr |" in (tmp_path / "r" / "report.md").read_text()


def test_a_record_older_than_its_language_pair_takes_it_from_its_settings(tmp_path) -> None:
    """results.json files written before "language_pair" keep the pair in "settings" (with
    machine paths hashed): the pair joins the row of today's runs, the paths do not."""
    fake_run(tmp_path, "new", 16, 1, 39.0, data="multi30k", pair=("en", "de"))
    old = tmp_path / "old"
    old.mkdir()
    settings = {"data.src": "en", "data.tgt": "de", "data.root": "sha256:0123abcd"}
    record = {"data": "multi30k", "encoding": "relative", "k": 16, "seed": 2, "model": "tiny"}
    record |= {"test": {"bleu": 41.0}, "settings": settings}
    (old / "results.json").write_text(json.dumps(record))
    rows = report([tmp_path], tmp_path / "r")["rows"]
    assert [(row["data"], row["seeds"]) for row in rows] == [("multi30k en-de", [1, 2])]


def test_measures_missing_from_a_results_record_are_none() -> None:
    got = measures({"test": {"bleu": 30.0}, "valid": None, "steps": 100})
    assert list(got) == list(MEASURES)
    assert got["test_bleu"] == 30.0 and got["steps"] == 100
    assert got["valid_bleu"] is None and got["test_chrf"] is None and got["parameters"] is None


def test_report_command_names_a_missing_directory(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nmt.report", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@pytest.mark.slow
def test_toy_k_sweep_through_hydra_multirun_and_nmt_report(tmp_path) -> None:
    """A 3-value k sweep with the clip_sweep experiment, then nmt-report on its directory."""
    sweep = tmp_path / "sweep"
    subprocess.run(
        [
            "nmt-train",
            "+experiment=clip_sweep",
            "encoding.k=0,2,16",
            "seed=1",
            "data.toy.train_size=2000",
            "data.toy.valid_size=20",
            "data.toy.test_size=20",
            "train.max_steps=60",
            "train.eval_every=60",
            "train.warmup_steps=30",
            "train.threads=1",
            "train.tensorboard=false",
            "decode.max_len_b=10",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ],
        check=True,
        capture_output=True,
    )
    # a path among the overrides (data.cache_dir) must not nest the job directories
    assert [p.parent.parent for p in sweep.rglob("results.json")] == [sweep] * 3
    proc = subprocess.run(["nmt-report", str(sweep)], capture_output=True, text=True, check=True)
    main_table, length_table = proc.stdout.split("Test BLEU by source length")[:2]
    rows = [
        line for line in main_table.splitlines() if line.startswith("| ") and "BLEU" not in line
    ]
    assert [row.split("|")[1].strip() for row in rows] == ["toy src-tgt"] * 3
    assert [row.split("|")[2].strip() for row in rows] == ["0", "2", "16"]
    by_length = [
        line for line in length_table.splitlines() if line.startswith("| ") and "1-10" not in line
    ]
    assert [row.split("|")[2].strip() for row in by_length] == ["0", "2", "16"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[3:6]]  # valid BLEU, test BLEU, test chrF
        assert all(float(c.split()[0]) >= 0 for c in cells), row
    assert "3 of 3 runs finished" in proc.stdout
    assert (sweep / "bleu_vs_k.png").stat().st_size > 1000
