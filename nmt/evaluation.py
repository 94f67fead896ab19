"""A split scored: decode it, then sacreBLEU BLEU, chrF and BLEU by source length.

    settings = decode_settings(cfg.decode, beam=1)
    result = evaluate_split(model, vocab, data.splits["valid"], settings, max_sentences=500)
    print(format_summary(result))

References are the raw target sentences; hypotheses are detokenised, so BLEU is
sacreBLEU's on plain text, the same as `sacrebleu REF -i HYP` on the files written here.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from nmt.config import DecodeConfig
from nmt.data.corpora import open_corpus
from nmt.data.prepare import resolve_data_config
from nmt.data.store import EncodedSplit
from nmt.decoding import model_device, translate_ids
from nmt.metrics import bleu_by_length, corpus_bleu, corpus_chrf, length_table_markdown
from nmt.textio import one_line, write_text_atomic


def evaluate_split(
    model: Any,
    vocab: Any,
    split: Any,
    settings: DecodeConfig | None = None,
    *,
    device: torch.device | str | None = None,
    max_sentences: int = 0,
    hyp_path: str | Path | None = None,
    progress: bool = False,
    precision: str = "fp32",
    compile: bool = False,
) -> dict[str, Any]:
    """Decode an `EncodedSplit` and score it; a JSON-ready dict (see the keys below).

    `settings` (default: DecodeConfig()) gives the search, and in `length_buckets` the
    upper ends of the source-length buckets; only the best hypothesis is scored, whatever
    `settings.nbest`. `max_sentences` > 0 scores only the first that many (quick
    validation). Beam 1 is greedy; `search` in the result says which was used. `hyp_path`
    receives the detokenised hypotheses, one per line, written atomically. `precision` and
    `compile` as in `translate_ids`.
    """
    settings = DecodeConfig() if settings is None else settings
    n = len(split) if max_sentences <= 0 else min(max_sentences, len(split))
    src_ids = [split.src[i] for i in range(n)]
    refs = [one_line(split.tgt_text[i]) for i in range(n)]
    device = model_device(model) if device is None else torch.device(device)
    was_training = getattr(model, "training", False)
    start = time.perf_counter()
    results = translate_ids(
        model,
        src_ids,
        dataclasses.replace(settings, nbest=1),
        device=device,
        progress=progress,
        precision=precision,
        compile=compile,
    )
    seconds = time.perf_counter() - start
    if was_training:
        model.train()  # the trainer calls this between steps
    # One line each, as in the files sacrebleu's command line reads (byte-fallback pieces
    # can decode to a line break).
    hyps = [one_line(vocab.decode(r[0].tokens)) if r else "" for r in results]
    if hyp_path is not None:
        write_text_atomic(hyp_path, hyps)
    bleu, chrf = corpus_bleu(hyps, refs), corpus_chrf(hyps, refs)
    src_lengths = [len(ids) - 1 for ids in src_ids]  # subwords, without the EOS
    out_tokens = sum(len(r[0].tokens) + 1 for r in results if r)
    return {
        "split": getattr(split, "name", None),
        "sentences": n,
        "search": "greedy" if settings.beam == 1 else "beam",
        "beam": settings.beam,
        "alpha": settings.alpha,
        "max_len_a": settings.max_len_a,
        "max_len_b": settings.max_len_b,
        "eos_rule": settings.eos_rule,
        "unk_penalty": settings.unk_penalty,
        "precision": precision,
        "bleu": bleu["score"],
        "chrf": chrf["score"],
        "bleu_signature": bleu["signature"],
        "chrf_signature": chrf["signature"],
        "bleu_detail": bleu,
        "by_length": bleu_by_length(hyps, refs, src_lengths, settings.length_buckets),
        "decode_seconds": round(seconds, 3),
        "sentences_per_second": round(n / seconds, 2) if seconds > 0 else None,
        "output_tokens": out_tokens,
        "device": str(device),
    }


def format_summary(result: dict[str, Any]) -> str:
    """A human-readable report of `evaluate_split`'s result, ending with the length table."""
    search = (
        "greedy" if result["search"] == "greedy" else f"beam {result['beam']}"
    ) + f", alpha {result['alpha']}, max_len {result['max_len_a']} * src + {result['max_len_b']}"
    lines = [
        f"sentences : {result['sentences']} ({result.get('split') or 'split'})",
        f"search    : {search}",
        f"BLEU      : {result['bleu']:.2f}   {result['bleu_signature']}",
        f"            {result['bleu_detail']['text']}",
        f"chrF      : {result['chrf']:.2f}   {result['chrf_signature']}",
        f"decoding  : {result['decode_seconds']:.1f} s, {result['sentences_per_second']} "
        f"sentences/s on {result['device']}",
        "",
        "BLEU by source length (subwords):",
        "",
        length_table_markdown(result["by_length"]),
    ]
    return "\n".join(lines)


def load_test_split(data_cfg: DictConfig | dict, role: str, vocab: Any) -> EncodedSplit:
    """The raw text of one split of a data config, encoded with `vocab` (the model's).

    The text is always encoded with the given vocabulary, whatever the data config, so a
    model can be scored on any corpus its vocabulary covers.
    """
    cfg = resolve_data_config(data_cfg)
    name = cfg[f"{role}_split"]
    text = open_corpus(cfg).read(name)
    return EncodedSplit.from_texts(vocab, text.src, text.tgt, name=name)
