"""Which of a report's differences are larger than seed noise.

Every setup (a report row) is trained with a few seeds. Their spread is one noise: the
pooled within-row standard deviation over all rows with two or more seeds,

    s = sqrt( sum_i (n_i - 1) s_i^2 / sum_i (n_i - 1) ),

the estimate of a one-way analysis of variance, with sum_i (n_i - 1) degrees of freedom.
A row's mean differs from the reference row's by Δ, whose standard error is
s * sqrt(1/n + 1/n_ref); |Δ| above `NOISE_STANDARD_ERRORS` of them is called beyond noise.
Two seeds per row estimate a row's own spread badly, which is why the spread is pooled.
"""

from __future__ import annotations

import math
from typing import Any

# |Δ| beyond this many standard errors is called beyond noise: about 95% two-sided under
# normal noise with many degrees of freedom (with few, Student's t asks for more: 2.45 at 6).
NOISE_STANDARD_ERRORS = 2.0
# The splits compared, as a report row names their BLEU.
SPLITS = ("valid", "test")


def pooled_std(rows: list[dict[str, Any]], measure: str) -> tuple[float | None, int]:
    """(pooled seed standard deviation of `measure`, its degrees of freedom) over `rows`;
    (None, 0) when no row has two runs."""
    squares, dof = 0.0, 0
    for row in rows:
        std, n = row.get(f"{measure}_std"), row["runs"]
        if std is not None and n >= 2:
            squares += (n - 1) * std**2
            dof += n - 1
    return (math.sqrt(squares / dof), dof) if dof else (None, 0)


def reference_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row with the best mean validation BLEU: chosen without looking at the test set."""
    scored = [row for row in rows if row.get("valid_bleu") is not None]
    return max(scored, key=lambda row: row["valid_bleu"]) if scored else None


def against_reference(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Every row's BLEU difference to the reference row, with its noise threshold per split.

    None when there is nothing to compare: fewer than two rows, or no seed spread."""
    ref = reference_row(rows)
    noise = {split: pooled_std(rows, f"{split}_bleu") for split in SPLITS}
    if ref is None or len(rows) < 2 or all(std is None for std, _ in noise.values()):
        return None
    compared = []
    for row in rows:
        if row is ref:
            continue
        entry: dict[str, Any] = {"row": row}
        for split in SPLITS:
            std, mean, ref_mean = noise[split][0], row[f"{split}_bleu"], ref[f"{split}_bleu"]
            if std is None or mean is None or ref_mean is None:
                entry[split] = None
                continue
            se = std * math.sqrt(1 / row["runs"] + 1 / ref["runs"])
            delta, threshold = mean - ref_mean, NOISE_STANDARD_ERRORS * se
            beyond = abs(delta) > threshold
            entry[split] = {"delta": delta, "threshold": threshold, "beyond": beyond}
        compared.append(entry)
    return {"reference": ref, "noise": noise, "rows": compared}
