"""`nmt-report RUN_DIR...`: the paper's tables from your own runs.

Reads every run under the given directories (a Hydra multirun, several, or single runs),
finds which config values differ between runs (the swept variables; the seed is averaged
over), and writes `report.md` (a Markdown table shaped like the paper's: one row per swept
value, mean and standard deviation over seeds), `report.csv`, and plots: BLEU against k
(log-scale x axis, error bars over seeds) when k was swept, and BLEU by source length.
With seeds, report.md says which rows differ from the best-on-validation row by more than
seed noise (`nmt.seed_noise`).
Failed and unfinished runs are listed as such, never dropped: a sweep still running
shows what has finished so far.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from nmt.results import MEASURES
from nmt.runs import Run, find_runs, summarize, swept_keys
from nmt.seed_noise import CONFIDENCE, SPLITS, by_corpus


def _cell(value: Any) -> str:
    """A swept value; "—" where the row's encoding has no such option."""
    return "—" if value is None else str(value)


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "—"
    text = f"{mean:,.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def _label(row_or_values: dict[str, Any], keys: list[str]) -> str:
    """A legend entry: names bare, options as key=value, options the row does not use left out."""
    parts = []
    for key in keys:
        value, short = row_or_values.get(key), key.split(".")[-1]
        if value is not None:
            parts.append(str(value) if short == "name" else f"{short}={value}")
    return ", ".join(parts) or "all runs"


def markdown(rows: list[dict[str, Any]], keys: list[str], runs: list[Run]) -> str:
    head = [k.split(".")[-1] if k.startswith("encoding.") else k for k in keys]
    lines = [
        "| "
        + " | ".join(
            [
                "data",
                *head,
                "valid BLEU",
                "test BLEU",
                "test chrF",
                "steps",
                "tokens/s",
                "parameters",
                "seeds",
            ]
        )
        + " |",
        "|---|" + "---|" * len(head) + "---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        cells = [row["data"], *(_cell(row.get(k)) for k in keys)] + [
            _fmt(row["valid_bleu"], row["valid_bleu_std"]),
            _fmt(row["test_bleu"], row["test_bleu_std"]),
            _fmt(row["test_chrf"], row["test_chrf_std"]),
            _fmt(row["steps"], None, 0),
            _fmt(row["tokens_per_s"], None, 0),
            _fmt(row["parameters"], None, 0),
            ", ".join(str(s) for s in row["seeds"]) or str(row["runs"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    finished = sum(r.status == "finished" for r in runs)
    text = [
        f"{finished} of {len(runs)} runs finished; mean ± standard deviation over seeds.",
        "",
        *lines,
    ]
    text += _length_table(rows, keys, head)
    text += _noise_table(rows, keys, head)
    others = [r for r in runs if r.status != "finished"]
    if others:
        text += [
            "",
            "Runs without results:",
            "",
            "| run | status | " + " | ".join(head) + " | detail |",
            "|---|---|" + "---|" * len(head) + "---|",
        ]
        for r in others:
            values = " | ".join(str(r.values.get(k)) for k in keys)
            text.append(f"| {r.path.name} | {r.status} | {values} | {r.detail} |")
    return "\n".join(text) + "\n"


def _length_table(rows: list[dict[str, Any]], keys: list[str], head: list[str]) -> list[str]:
    """Test BLEU per source-length bucket (mean over seeds), one row per swept combination."""
    buckets: list[str] = []
    for row in rows:  # buckets no test sentence falls in (toy lengths) get no column
        buckets += [
            b["bucket"]
            for b in row["by_length"]
            if b["bucket"] not in buckets and b["bleu"] is not None
        ]
    if not buckets:
        return []
    lines = [
        "",
        "Test BLEU by source length (subwords):",
        "",
        "| " + " | ".join(["data", *head, *buckets]) + " |",
        "|---|" + "---|" * len(head) + "---:|" * len(buckets),
    ]
    for row in rows:
        bleu = {b["bucket"]: b["bleu"] for b in row["by_length"]}
        cells = [
            row["data"],
            *(_cell(row.get(k)) for k in keys),
            *(_fmt(bleu.get(b), None, 1) for b in buckets),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _noise_table(rows: list[dict[str, Any]], keys: list[str], head: list[str]) -> list[str]:
    """Each row's BLEU difference to the best-on-validation row of its corpus, against the
    seed noise."""
    lines = []
    for compared in by_corpus(rows):
        ref = compared["reference"]
        noise = ", ".join(
            f"s = {n['std']:.2f} {split} BLEU ({_plural(n['dof'], 'degree')} of freedom, "
            f"t = {n['t']:.2f})"
            for split, n in compared["noise"].items()
            if n["std"] is not None
        )
        lines += [
            "",
            f"Against seed noise ({ref['data']}): Δ is a row's mean BLEU minus that of "
            f"**{_label(ref, keys)}** ({_plural(ref['runs'], 'run')}, the best validation BLEU). "
            f"It is beyond noise when |Δ| > t s √(1/n + 1/n_ref): s is the seed standard deviation "
            f"pooled over every row with two or more runs, t Student's two-sided "
            f"{CONFIDENCE:.0%} critical value at its degrees of freedom; {noise}. The "
            f"reference was picked on validation, which favours it in the validation Δ (not "
            f"in the test Δ); each row is a separate test.",
            "",
            "| "
            + " | ".join(["data", *head, "runs"])
            + "".join(f" | Δ {split} BLEU | ± noise" for split in SPLITS)
            + " | beyond noise |",
            "|---|" + "---|" * len(head) + "---:|" + "---:|---:|" * len(SPLITS) + "---|",
        ]
        for entry in compared["rows"]:
            row, cells = entry["row"], []
            for split in SPLITS:
                d = entry[split]
                cells += [f"{d['delta']:+.2f}", f"{d['threshold']:.2f}"] if d else ["—", "—"]
            beyond = ", ".join(s for s in SPLITS if entry[s] and entry[s]["beyond"]) or "—"
            row_cells = [row["data"], *(_cell(row.get(key)) for key in keys), str(row["runs"])]
            lines.append("| " + " | ".join([*row_cells, *cells, beyond]) + " |")
    return lines


def write_csv(rows: list[dict[str, Any]], keys: list[str], path: Path) -> None:
    columns = ["data", *keys, "runs", "seeds"]
    for name in MEASURES:
        columns += [name, f"{name}_std"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "seeds": " ".join(map(str, row["seeds"]))})


def _save(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, outside: bool = False) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if outside:  # many lines: a legend inside would cover them
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bleu_vs_k(rows: list[dict[str, Any]], keys: list[str], path: Path) -> bool:
    """Test (and validation) BLEU against k, one line per combination of the other keys."""
    rows = [r for r in rows if r.get("encoding.k") is not None]  # encodings without a k
    if "encoding.k" not in keys or not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [k for k in keys if k != "encoding.k"]
    series: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        series[_label(row, others)].append(row)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, members in series.items():
        members.sort(key=lambda r: r["encoding.k"])
        ks = [r["encoding.k"] for r in members]
        for measure, style in (("test_bleu", "-o"), ("valid_bleu", "--s")):
            ys = [r[measure] if r[measure] is not None else math.nan for r in members]
            errs = [r[f"{measure}_std"] or 0.0 for r in members]
            name = f"{measure.split('_')[0]}" + (f" ({label})" if others else "")
            ax.errorbar(ks, ys, yerr=errs, fmt=style, capsize=3, label=name)
    ax.set_xscale("symlog", linthresh=1)  # k = 0 stays on the axis
    all_k = sorted({r["encoding.k"] for r in rows})
    ax.set_xticks(all_k)
    ax.set_xticklabels([str(k) for k in all_k])
    ax.minorticks_off()
    _save(fig, ax, path, "clipping distance k", "BLEU")
    return True


def plot_by_length(rows: list[dict[str, Any]], keys: list[str], path: Path) -> bool:
    """Test BLEU per source-length bucket, one line per row."""
    if not any(row["by_length"] for row in rows):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(rows) > 4
    fig, ax = plt.subplots(figsize=(8.5, 4) if many else (6, 4))
    styles = ("-o", "--s", ":^", "-.D")  # the colour cycle has 10 colours; then the style changes
    for i, row in enumerate(rows):
        points = [(b["bucket"], b["bleu"]) for b in row["by_length"] if b["bleu"] is not None]
        if points:
            style = styles[(i // 10) % len(styles)]
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=_label(row, keys))
    _save(fig, ax, path, "source length (subwords)", "test BLEU", outside=many)
    return True


def plot_bleu_by_row(rows: list[dict[str, Any]], keys: list[str], path: Path) -> bool:
    """Test and validation BLEU of every row, mean with the seed standard deviation as error
    bars: the table's rows side by side (Table 1's encodings)."""
    rows = [r for r in rows if r["test_bleu"] is not None]
    if len(rows) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 4))
    xs = list(range(len(rows)))
    for measure, style, shift in (("test_bleu", "o", -0.1), ("valid_bleu", "s", 0.1)):
        ys = [r[measure] if r[measure] is not None else math.nan for r in rows]
        errs = [r[f"{measure}_std"] or 0.0 for r in rows]
        label = measure.split("_")[0] + " (mean ± std over seeds)"
        ax.errorbar([x + shift for x in xs], ys, yerr=errs, fmt=style, capsize=3, label=label)
    ax.set_xticks(xs)
    ax.set_xticklabels([_label(r, keys) for r in rows], rotation=30, ha="right", fontsize=8)
    _save(fig, ax, path, "", "BLEU")
    return True


def report(paths: list[Path], out_dir: Path) -> dict[str, Any]:
    """Write report.md, report.csv and the plots to `out_dir`; return what was written."""
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(
            f"no runs (results.json, failed.json or .hydra/) under {', '.join(map(str, paths))}"
        )
    keys = swept_keys(runs)
    rows = summarize(runs, keys)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"markdown": out_dir / "report.md", "csv": out_dir / "report.csv"}
    written["markdown"].write_text(markdown(rows, keys, runs))
    write_csv(rows, keys, written["csv"])
    try:
        if plot_bleu_vs_k(rows, keys, out_dir / "bleu_vs_k.png"):
            written["bleu_vs_k"] = out_dir / "bleu_vs_k.png"
        if plot_by_length(rows, keys, out_dir / "bleu_by_length.png"):
            written["bleu_by_length"] = out_dir / "bleu_by_length.png"
        if plot_bleu_by_row(rows, keys, out_dir / "bleu_by_row.png"):
            written["bleu_by_row"] = out_dir / "bleu_by_row.png"
    except ImportError:
        print(
            "nmt-report: matplotlib is not installed (pip install -e '.[plot]'): no plots",
            file=sys.stderr,
        )
    return {"keys": keys, "rows": rows, "runs": runs, "files": written}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nmt-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument(
        "-o", "--out-dir", type=Path, help="where to write (default: the first directory)"
    )
    args = parser.parse_args(argv)
    try:
        out = report(args.runs, args.out_dir or args.runs[0])
    except FileNotFoundError as err:
        print(f"nmt-report: {err}", file=sys.stderr)
        return 2
    print(out["files"]["markdown"].read_text())
    for name, path in out["files"].items():
        print(f"wrote {name}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
