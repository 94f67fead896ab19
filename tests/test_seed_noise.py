"""Seed noise in nmt-report: the pooled spread, the reference row, which differences exceed it."""

from __future__ import annotations

import math
import statistics

import pytest

from nmt.report import report
from nmt.seed_noise import against_reference, pooled_std
from tests.test_report import fake_run


def row(name: str, valid: list[float], test: list[float]) -> dict:
    """A report row as nmt.runs.summarize makes it, from per-seed BLEU."""
    out = {"encoding.name": name, "runs": len(test)}
    for split, values in (("valid", valid), ("test", test)):
        out[f"{split}_bleu"] = statistics.fmean(values)
        out[f"{split}_bleu_std"] = statistics.stdev(values) if len(values) > 1 else None
    return out


def test_pooled_std_is_the_within_row_spread_of_every_row_with_seeds() -> None:
    a, b, c = [30.0, 31.0, 32.5], [20.0, 21.0], [25.0]
    rows = [row("a", a, a), row("b", b, b), row("c", c, c)]
    # straight from the definition: squared deviations from each row's own mean
    squares = sum((v - statistics.fmean(g)) ** 2 for g in (a, b) for v in g)
    std, dof = pooled_std(rows, "test_bleu")
    assert dof == 3  # (3 - 1) + (2 - 1); the one-seed row adds nothing
    assert std == pytest.approx(math.sqrt(squares / 3))
    assert pooled_std([row("c", c, c)], "test_bleu") == (None, 0)


def test_differences_are_to_the_best_validation_row_and_flagged_beyond_two_standard_errors():
    rows = [
        row("best_on_valid", [40.0, 40.2], [38.0, 38.2]),
        row("best_on_test", [39.9, 40.1], [38.9, 39.1]),  # +1.0 test: beyond noise
        row("close", [39.8, 40.0], [38.05, 38.25]),  # +0.05 test: within
        row("one_seed", [35.0], [33.0]),
    ]
    out = against_reference(rows)
    assert out["reference"]["encoding.name"] == "best_on_valid"  # not the best test BLEU
    s = pooled_std(rows, "test_bleu")[0]
    assert s == pytest.approx(statistics.stdev([38.0, 38.2]))
    by_name = {e["row"]["encoding.name"]: e for e in out["rows"]}
    assert by_name["best_on_test"]["test"]["delta"] == pytest.approx(0.9)
    assert by_name["best_on_test"]["test"]["threshold"] == pytest.approx(2 * s * math.sqrt(1))
    assert by_name["best_on_test"]["test"]["beyond"]
    assert not by_name["close"]["test"]["beyond"]
    # one seed against two: the standard error grows with sqrt(1/1 + 1/2)
    assert by_name["one_seed"]["test"]["threshold"] == pytest.approx(2 * s * math.sqrt(1.5))
    assert by_name["one_seed"]["test"]["beyond"]


def test_nothing_to_compare_without_seeds_or_without_a_second_row() -> None:
    assert against_reference([row("a", [30.0], [30.0]), row("b", [31.0], [31.0])]) is None
    assert against_reference([row("a", [30.0, 31.0], [30.0, 31.0])]) is None


def test_report_says_which_rows_differ_beyond_seed_noise(tmp_path) -> None:
    bleu = {(2, 1): 30.0, (2, 2): 30.4, (16, 1): 33.0, (16, 2): 33.4, (64, 1): 33.5}
    for n, ((k, seed), value) in enumerate(sorted(bleu.items())):
        fake_run(tmp_path, f"{n}_k={k}_seed={seed}", k, seed, value)
    report([tmp_path], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "minus that of **k=64** (the best validation BLEU)" in text
    assert "0.28 test BLEU (2 degrees of freedom)" in text  # stdev of (x, x + 0.4)
    assert "| toy src-tgt | 2 | 2 | -3.30 | 0.69 | -3.30 | 0.69 | valid, test |" in text
    assert "| toy src-tgt | 16 | 2 | -0.30 | 0.69 | -0.30 | 0.69 | — |" in text


def test_report_without_seeds_has_no_noise_section(tmp_path) -> None:
    for n, k in enumerate((2, 16)):
        fake_run(tmp_path, f"{n}_k={k}", k, 1, 30.0 + k)
    report([tmp_path], tmp_path / "report")
    assert "seed noise" not in (tmp_path / "report" / "report.md").read_text()
