"""Which of a report's differences are larger than seed noise.

Every setup (a report row) is trained with a few seeds. Their spread is one noise: the
pooled within-row standard deviation over all rows with two or more seeds,

    s = sqrt( sum_i (n_i - 1) s_i^2 / sum_i (n_i - 1) ),

the estimate of a one-way analysis of variance, with sum_i (n_i - 1) degrees of freedom.
A row's mean differs from the reference row's by Δ, whose standard error is
s * sqrt(1/n + 1/n_ref). |Δ| is beyond noise when it exceeds t * SE, t the two-sided
`CONFIDENCE` quantile of Student's t at those degrees of freedom: with few seeds s is
itself uncertain, and t grows accordingly (12.7 at one degree of freedom, 2.45 at six).
Not corrected for: the reference is picked on validation, so its validation Δ is biased in
its favour (the test Δ is not), and each row is a separate test at `CONFIDENCE`.
"""

from __future__ import annotations

import math
from typing import Any

CONFIDENCE = 0.95  # two-sided: a difference beyond noise at this level
# The splits compared, as a report row names their BLEU.
SPLITS = ("valid", "test")
_BISECTION_STEPS = 100  # halvings of the bracket for t: far below float resolution


def _t_central_mass(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's T with an integer number of degrees of freedom.

    The finite series of Abramowitz & Stegun 26.7.3 (odd) and 26.7.4 (even), in
    theta = atan(t / sqrt(dof))."""
    theta = math.atan(t / math.sqrt(dof))
    c2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    if dof % 2 == 0:  # sin(theta) * (1 + 1/2 c2 + 1*3/(2*4) c2^2 + ...), dof/2 terms
        for j in range(1, dof // 2):
            term *= c2 * (2 * j - 1) / (2 * j)
            total += term
        return math.sin(theta) * total
    if dof == 1:
        return 2 * theta / math.pi
    for j in range(1, (dof - 1) // 2):  # 1 + 2/3 c2 + 2*4/(3*5) c2^2 + ...
        term *= c2 * (2 * j) / (2 * j + 1)
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)


def t_quantile(dof: int, confidence: float = CONFIDENCE) -> float:
    """The t with P(|T| <= t) = `confidence` for Student's T with `dof` degrees of freedom."""
    if dof < 1 or not 0 < confidence < 1:
        raise ValueError(
            f"t_quantile needs dof >= 1 and 0 < confidence < 1, got {dof}, {confidence}"
        )
    low, high = 0.0, 1.0
    while _t_central_mass(high, dof) < confidence:
        high *= 2
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_central_mass(mid, dof) < confidence else (low, mid)
    return (low + high) / 2


def _count(row: dict[str, Any], measure: str) -> int:
    """How many runs of the row have `measure` (a run may lack one, e.g. no test split)."""
    return row.get(f"{measure}_n", row["runs"])


def pooled_std(rows: list[dict[str, Any]], measure: str) -> tuple[float | None, int]:
    """(pooled seed standard deviation of `measure`, its degrees of freedom) over `rows`;
    (None, 0) when no row has two values, or when every row's seeds agree exactly (s = 0
    would call any difference real)."""
    squares, dof = 0.0, 0
    for row in rows:
        std, n = row.get(f"{measure}_std"), _count(row, measure)
        if std is not None and n >= 2:
            squares += (n - 1) * std**2
            dof += n - 1
    return (math.sqrt(squares / dof), dof) if dof and squares > 0 else (None, 0)


def reference_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row with the best mean validation BLEU: chosen without looking at the test set."""
    scored = [row for row in rows if row.get("valid_bleu") is not None]
    return max(scored, key=lambda row: row["valid_bleu"]) if scored else None


def against_reference(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Every row's BLEU difference to the reference row, with its noise threshold per split.

    `rows` are of one corpus (`by_corpus` splits a report). None when there is nothing to
    compare: fewer than two rows, or no seed spread."""
    ref = reference_row(rows)
    noise = {}
    for split in SPLITS:
        std, dof = pooled_std(rows, f"{split}_bleu")
        noise[split] = {"std": std, "dof": dof, "t": t_quantile(dof) if std else None}
    if ref is None or len(rows) < 2 or all(n["std"] is None for n in noise.values()):
        return None
    compared = []
    for row in rows:
        if row is ref:
            continue
        entry: dict[str, Any] = {"row": row}
        for split in SPLITS:
            measure, n = f"{split}_bleu", noise[split]
            mean, ref_mean = row[measure], ref[measure]
            if n["std"] is None or mean is None or ref_mean is None:
                entry[split] = None
                continue
            se = n["std"] * math.sqrt(1 / _count(row, measure) + 1 / _count(ref, measure))
            delta, threshold = mean - ref_mean, n["t"] * se
            beyond = abs(delta) > threshold
            entry[split] = {"delta": delta, "threshold": threshold, "beyond": beyond}
        compared.append(entry)
    return {"reference": ref, "noise": noise, "rows": compared}


def by_corpus(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`against_reference` for each corpus and language pair of a report separately: BLEU
    on EN-FR and on EN-DE is not one scale, nor need their seed spreads agree."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["data"], []).append(row)
    compared = (against_reference(group) for group in groups.values())
    return [c for c in compared if c is not None]
