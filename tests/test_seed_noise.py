"""Seed noise in nmt-report: the pooled spread, the reference row, which differences exceed it."""

from __future__ import annotations

import math
import statistics

import pytest
from test_report import fake_run

from nmt.report import report
from nmt.seed_noise import against_reference, by_corpus, pooled_std, t_quantile


def row(name: str, valid: list[float], test: list[float], data: str = "multi30k en-de") -> dict:
    """A report row as nmt.runs.summarize makes it, from per-seed BLEU (an empty list: the
    runs have no such measure)."""
    out: dict = {"encoding.name": name, "runs": max(len(valid), len(test)), "data": data}
    for split, values in (("valid", valid), ("test", test)):
        out[f"{split}_bleu"] = statistics.fmean(values) if values else None
        out[f"{split}_bleu_std"] = statistics.stdev(values) if len(values) > 1 else None
        out[f"{split}_bleu_n"] = len(values)
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


@pytest.mark.parametrize(
    "dof, quantile",  # two-sided 95% points of Student's t, as printed in statistics tables
    [(1, 12.706), (2, 4.303), (3, 3.182), (6, 2.447), (7, 2.365), (30, 2.042), (1000, 1.962)],
)
def test_t_quantile_matches_the_tables(dof: int, quantile: float) -> None:
    assert t_quantile(dof) == pytest.approx(quantile, abs=5e-4)


def test_t_quantile_refuses_what_has_no_quantile() -> None:
    with pytest.raises(ValueError, match="dof >= 1"):
        t_quantile(0)


def test_differences_are_to_the_best_validation_row_and_flagged_beyond_the_t_threshold() -> None:
    rows = [
        row("best_on_valid", [40.0, 40.2], [38.0, 38.2]),
        row("best_on_test", [39.9, 40.1], [38.9, 39.1]),  # +0.9 test: beyond noise
        row("close", [39.8, 40.0], [38.05, 38.25]),  # +0.05 test: within
        row("one_seed", [35.0], [33.0]),
    ]
    out = against_reference(rows)
    assert out["reference"]["encoding.name"] == "best_on_valid"  # not the best test BLEU
    s = pooled_std(rows, "test_bleu")[0]
    assert s == pytest.approx(statistics.stdev([38.0, 38.2]))
    by_name = {e["row"]["encoding.name"]: e for e in out["rows"]}
    assert by_name["best_on_test"]["test"]["delta"] == pytest.approx(0.9)
    t = t_quantile(3)  # three rows of two seeds
    assert by_name["best_on_test"]["test"]["threshold"] == pytest.approx(t * s * math.sqrt(1))
    assert by_name["best_on_test"]["test"]["beyond"]
    assert not by_name["close"]["test"]["beyond"]
    # one seed against two: the standard error grows with sqrt(1/1 + 1/2)
    assert by_name["one_seed"]["test"]["threshold"] == pytest.approx(t * s * math.sqrt(1.5))
    assert by_name["one_seed"]["test"]["beyond"]


def test_degrees_of_freedom_and_counts_are_those_of_the_values_each_measure_has() -> None:
    """Three seeds, of which one run has no test BLEU: its test row counts two values."""
    rows = [
        row("ref", [40.0, 40.4, 40.2], [39.0, 39.6]),
        row("other", [38.0, 38.2, 38.7], [37.0, 37.3, 37.2]),
    ]
    out = against_reference(rows)
    assert out["noise"]["valid"]["dof"] == 4  # (3 - 1) + (3 - 1)
    assert out["noise"]["test"]["dof"] == 3  # (2 - 1) + (3 - 1)
    s, t = out["noise"]["test"]["std"], t_quantile(3)
    entry = out["rows"][0]
    assert entry["test"]["threshold"] == pytest.approx(t * s * math.sqrt(1 / 3 + 1 / 2))
    assert out["noise"]["valid"]["t"] == pytest.approx(t_quantile(4))


def test_nothing_to_compare_without_seeds_or_without_a_second_row() -> None:
    assert against_reference([row("a", [30.0], [30.0]), row("b", [31.0], [31.0])]) is None
    assert against_reference([row("a", [30.0, 31.0], [30.0, 31.0])]) is None


def test_seeds_that_agree_exactly_give_no_noise_estimate() -> None:
    """s = 0 (a saturated toy task) would call a difference of 0.01 BLEU real."""
    rows = [row("a", [100.0, 100.0], [100.0, 100.0]), row("b", [99.99], [99.99])]
    assert pooled_std(rows, "test_bleu") == (None, 0)
    assert against_reference(rows) is None


def test_each_corpus_is_compared_within_itself() -> None:
    """EN-FR BLEU is not on EN-DE's scale: each pair has its own reference and noise."""
    rows = [
        row("relative", [40.0, 40.4], [39.0, 39.4]),
        row("absolute", [37.0, 37.2], [36.8, 37.1]),
        row("relative", [57.4, 57.6], [59.1, 60.1], data="multi30k en-fr"),
        row("absolute", [54.2, 54.6], [55.8, 56.0], data="multi30k en-fr"),
    ]
    out = {c["reference"]["data"]: c for c in by_corpus(rows)}
    assert sorted(out) == ["multi30k en-de", "multi30k en-fr"]
    for data, compared in out.items():
        assert compared["reference"]["encoding.name"] == "relative"
        assert [e["row"]["data"] for e in compared["rows"]] == [data]
    de_std = out["multi30k en-de"]["noise"]["test"]["std"]
    assert de_std == pytest.approx(math.sqrt((0.4**2 / 2 + 0.3**2 / 2) / 2))


def test_report_says_which_rows_differ_beyond_seed_noise(tmp_path) -> None:
    bleu = {(2, 1): 30.0, (2, 2): 30.4, (16, 1): 33.0, (16, 2): 33.4, (64, 1): 33.5}
    for n, ((k, seed), value) in enumerate(sorted(bleu.items())):
        fake_run(tmp_path, f"{n}_k={k}_seed={seed}", k, seed, value)
    report([tmp_path], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    head = "Against seed noise (toy src-tgt): Δ is a row's mean BLEU minus that of **k=64** (1 run,"
    assert head in text
    assert "s = 0.28 test BLEU (2 degrees of freedom, t = 4.30)" in text  # stdev of (x, x + 0.4)
    assert "| toy src-tgt | 2 | 2 | -3.30 | 1.49 | -3.30 | 1.49 | valid, test |" in text
    assert "| toy src-tgt | 16 | 2 | -0.30 | 1.49 | -0.30 | 1.49 | — |" in text


def test_report_without_seeds_has_no_noise_section(tmp_path) -> None:
    for n, k in enumerate((2, 16)):
        fake_run(tmp_path, f"{n}_k={k}", k, 1, 30.0 + k)
    report([tmp_path], tmp_path / "report")
    assert "seed noise" not in (tmp_path / "report" / "report.md").read_text()


def test_one_tight_pair_of_seeds_does_not_call_a_small_difference_real() -> None:
    """Two seeds 0.08 apart are one degree of freedom: t = 12.7 keeps 0.5 BLEU within noise,
    where a fixed two standard errors (0.2) would call it real."""
    rows = [row("two_seeds", [40.2, 39.4], [39.50, 39.42]), row("one_seed", [39.6], [38.95])]
    entry = against_reference(rows)["rows"][0]
    assert entry["test"]["delta"] == pytest.approx(-0.51)
    assert 2 * statistics.stdev([39.50, 39.42]) * math.sqrt(1.5) < abs(entry["test"]["delta"])
    assert not entry["test"]["beyond"]
