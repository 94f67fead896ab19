"""sacreBLEU corpus BLEU and chrF with their signatures, and BLEU by source-length bucket.

Every number is sacreBLEU's on detokenised text with its default settings (13a
tokenisation, mixed case, exponential smoothing), the same as `sacrebleu REF -i HYP`;
results are plain dicts so they go straight into JSON.
"""

from __future__ import annotations

from collections.abc import Sequence

from sacrebleu.metrics import BLEU, CHRF

from nmt.config import DecodeConfig

# Buckets 1-10, 11-20, 21-30, 31-50, 51+ subwords (decode.length_buckets).
DEFAULT_LENGTH_EDGES = tuple(DecodeConfig().length_buckets)


def _check(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str]) -> dict:
    """Corpus BLEU: score, n-gram precisions, brevity penalty, lengths and the signature."""
    _check(hyps, refs)
    metric = BLEU()
    result = metric.corpus_score(list(hyps), [list(refs)])
    return {
        "score": result.score,
        "precisions": list(result.precisions),
        "bp": result.bp,
        "sys_len": result.sys_len,
        "ref_len": result.ref_len,
        "signature": str(metric.get_signature()),
        "text": str(result),
    }


def corpus_chrf(hyps: Sequence[str], refs: Sequence[str]) -> dict:
    """Corpus chrF (character 6-grams, beta 2): score and the signature."""
    _check(hyps, refs)
    metric = CHRF()
    result = metric.corpus_score(list(hyps), [list(refs)])
    return {"score": result.score, "signature": str(metric.get_signature()), "text": str(result)}


def bucket_label(lo: int, hi: int | None) -> str:
    """`"11-20"` for a closed bucket, `"51+"` for the last one."""
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def bleu_by_length(
    hyps: Sequence[str],
    refs: Sequence[str],
    src_lengths: Sequence[int],
    edges: Sequence[int] = DEFAULT_LENGTH_EDGES,
) -> list[dict]:
    """BLEU per source-length bucket; `edges` are the inclusive upper ends of all but the last.

    Each row: bucket label, bounds, number of sentences, BLEU (None for an empty bucket),
    and the system and reference lengths (a short `sys_len` shows under-generation).
    """
    _check(hyps, refs)
    if len(src_lengths) != len(hyps):
        raise ValueError(f"{len(src_lengths)} source lengths but {len(hyps)} hypotheses")
    edges = sorted(edges)
    bounds = list(zip([1, *(e + 1 for e in edges)], [*edges, None], strict=True))
    rows = []
    for lo, hi in bounds:
        idx = [i for i, n in enumerate(src_lengths) if n >= lo and (hi is None or n <= hi)]
        row: dict = {"bucket": bucket_label(lo, hi), "min": lo, "max": hi, "sentences": len(idx)}
        if idx:
            result = BLEU().corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]])
            row.update(bleu=result.score, sys_len=result.sys_len, ref_len=result.ref_len)
        else:
            row.update(bleu=None, sys_len=0, ref_len=0)
        rows.append(row)
    return rows


def length_table_markdown(rows: Sequence[dict]) -> str:
    """The by-length rows as a Markdown table."""
    lines = [
        "| source subwords | sentences | BLEU | hyp/ref length |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        bleu = "—" if row["bleu"] is None else f"{row['bleu']:.2f}"
        ratio = f"{row['sys_len'] / row['ref_len']:.3f}" if row["ref_len"] else "—"
        lines.append(f"| {row['bucket']} | {row['sentences']} | {bleu} | {ratio} |")
    return "\n".join(lines)
