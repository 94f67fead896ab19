"""sacreBLEU wrappers: same numbers as sacrebleu itself, signatures, BLEU by source length."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from nmt.metrics import bleu_by_length, corpus_bleu, corpus_chrf, length_table_markdown

REFS = [
    "The cat sat on the mat.",
    "A man is riding a bicycle down the street.",
    "Two dogs play in the snow.",
    "She reads a book in the park every morning.",
    "The children are laughing.",
]
HYPS = [
    "The cat sat on a mat.",
    "A man rides a bike down the street.",
    "Two dogs are playing in snow.",
    "She reads a book in the park every morning.",
    "Children laugh.",
]


def test_bleu_and_chrf_are_sacrebleus_with_signatures() -> None:
    bleu = corpus_bleu(HYPS, REFS)
    assert bleu["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert 0 < bleu["score"] < 100
    assert bleu["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    chrf = corpus_chrf(HYPS, REFS)
    assert chrf["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)
    assert "nc:6|nw:0" in chrf["signature"]
    json.dumps([bleu, chrf])  # plain data


def test_a_perfect_output_scores_100_and_mismatched_lengths_are_refused() -> None:
    assert corpus_bleu(REFS, REFS)["score"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="4 hypotheses but 5 references"):
        corpus_bleu(HYPS[:4], REFS)


def test_sentences_go_to_the_right_length_bucket() -> None:
    lengths = [1, 10, 11, 20, 21, 30, 31, 50, 51, 400]
    hyps = refs = [f"sentence {i}" for i in range(len(lengths))]
    rows = bleu_by_length(hyps, refs, lengths)
    assert [r["bucket"] for r in rows] == ["1-10", "11-20", "21-30", "31-50", "51+"]
    assert [r["sentences"] for r in rows] == [2, 2, 2, 2, 2]
    assert rows[-1]["max"] is None


def test_bucket_bleu_is_sacrebleu_on_the_bucket_and_empty_buckets_have_none() -> None:
    lengths = [3, 25, 4, 40, 7]
    rows = bleu_by_length(HYPS, REFS, lengths, edges=[5, 30])
    assert [r["bucket"] for r in rows] == ["1-5", "6-30", "31+"]
    short = [0, 2]
    assert rows[0]["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu([HYPS[i] for i in short], [[REFS[i] for i in short]]).score
    )
    assert rows[1]["sentences"] == 2 and rows[2]["sentences"] == 1
    empty = bleu_by_length(HYPS, REFS, [3, 3, 3, 3, 3], edges=[5, 30])
    assert empty[1]["bleu"] is None and empty[1]["sentences"] == 0
    table = length_table_markdown(empty)
    assert table.splitlines()[0].startswith("| source subwords |")
    assert "| 6-30 | 0 | — |" in table
    json.dumps(rows)
