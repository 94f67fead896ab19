"""Evaluate a model on a test set (sacreBLEU BLEU, chrF, BLEU by length), and `nmt-evaluate`.

    nmt-evaluate RUN/checkpoint_best.pt                       # the checkpoint's own test set
    nmt-evaluate RUN/checkpoint_*.pt --split valid           # several: averaged on the fly
    nmt-evaluate ckpt.pt data=multi30k data.tgt=fr --beam 4  # another data config

Test text is always encoded with the checkpoint's own vocabulary, whatever the data
config, so a model can be scored on any corpus its vocabulary covers. References are the
raw target sentences; hypotheses are detokenised, so BLEU is sacreBLEU's on plain text.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nmt.config import EVALUATION_ENCODING_OPTIONS, DecodeConfig
from nmt.device import resolve_device
from nmt.metrics import (
    DEFAULT_LENGTH_EDGES,
    bleu_by_length,
    corpus_bleu,
    corpus_chrf,
    length_table_markdown,
)
from nmt.translate import (
    TranslateError,
    add_decode_arguments,
    decode_settings,
    model_device,
    one_line,
    translate_ids,
    write_text_atomic,
)

ROLES = ("train", "valid", "test")
# Overrides nmt-evaluate accepts besides data.*: evaluation-time options of the model.
MODEL_OVERRIDES = tuple(f"encoding.{key}" for key in EVALUATION_ENCODING_OPTIONS)


def evaluate_split(
    model: Any,
    vocab: Any,
    split: Any,
    *,
    beam: int = DecodeConfig.beam,
    alpha: float = DecodeConfig.alpha,
    max_len_a: float = DecodeConfig.max_len_a,
    max_len_b: int = DecodeConfig.max_len_b,
    max_tokens: int = DecodeConfig.max_tokens,
    device: torch.device | str | None = None,
    max_sentences: int = 0,
    hyp_path: str | Path | None = None,
    length_edges: Sequence[int] = DEFAULT_LENGTH_EDGES,
    progress: bool = False,
) -> dict[str, Any]:
    """Decode an `EncodedSplit` and score it; a JSON-ready dict (see the keys below).

    `max_sentences` > 0 scores only the first that many (quick validation). Beam 1 is
    greedy; `search` in the result says which was used. `hyp_path` receives the
    detokenised hypotheses, one per line, written atomically.
    """
    n = len(split) if max_sentences <= 0 else min(max_sentences, len(split))
    src_ids = [split.src[i] for i in range(n)]
    refs = [one_line(split.tgt_text[i]) for i in range(n)]
    device = model_device(model) if device is None else torch.device(device)
    was_training = getattr(model, "training", False)
    start = time.perf_counter()
    results = translate_ids(
        model, src_ids, beam=beam, alpha=alpha, max_len_a=max_len_a, max_len_b=max_len_b,
        max_tokens=max_tokens, nbest=1, device=device, progress=progress,
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
        "search": "greedy" if beam == 1 else "beam",
        "beam": beam,
        "alpha": alpha,
        "max_len_a": max_len_a,
        "max_len_b": max_len_b,
        "bleu": bleu["score"],
        "chrf": chrf["score"],
        "bleu_signature": bleu["signature"],
        "chrf_signature": chrf["signature"],
        "bleu_detail": bleu,
        "by_length": bleu_by_length(hyps, refs, src_lengths, length_edges),
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
        f"decoding  : {result['decode_seconds']:.1f} s, {result['sentences_per_second']} sentences/s "
        f"on {result['device']}",
        "",
        "BLEU by source length (subwords):",
        "",
        length_table_markdown(result["by_length"]),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# the command line


OVERRIDE_KEY = re.compile(r"[+~]*[A-Za-z_][\w.]*")  # data.root, encoding.rotary_factor, ...


def split_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional arguments -> (checkpoint paths, `key=value` overrides).

    An override's key is a dotted name (`data.root=...`); anything else, and any existing
    file, is a checkpoint: sweep job directories are named `3_encoding.k=16,seed=1/`, and
    their checkpoints must not be mistaken for overrides."""

    def is_override(arg: str) -> bool:
        key, eq, _ = arg.partition("=")
        return bool(eq) and OVERRIDE_KEY.fullmatch(key) is not None and not Path(arg).is_file()

    checkpoints = [a for a in inputs if not is_override(a)]
    overrides = [a for a in inputs if is_override(a)]
    return checkpoints, overrides


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The checkpoint's config with `data=NAME`, `data.KEY=VALUE` and model-side overrides."""
    from nmt.config import compose

    allowed = ("data=", "data.", *(f"{k}=" for k in MODEL_OVERRIDES))
    bad = [o for o in overrides if not o.startswith(allowed)]
    if bad:
        raise TranslateError(
            f"cannot override {', '.join(bad)}: nmt-evaluate takes data=NAME, data.KEY=VALUE "
            f"and {', '.join(MODEL_OVERRIDES)}; decoding options are flags (--beam, --alpha)"
        )
    cfg = OmegaConf.create(config)
    group = [o for o in overrides if o.startswith("data=")]
    rest = [o for o in overrides if not o.startswith("data=")]
    try:
        if group:  # a named data config replaces the checkpoint's
            cfg.data = OmegaConf.create(OmegaConf.to_container(compose(group).data))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(rest))
    except (OmegaConfBaseException, HydraException) as err:
        raise TranslateError(f"bad override: {str(err).splitlines()[0]}") from None
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def load_test_split(data_cfg: DictConfig | dict, role: str, vocab: Any) -> Any:
    """The raw text of one split of a data config, encoded with `vocab` (the model's)."""
    from nmt.data.corpora import open_corpus
    from nmt.data.prepare import resolve_data_config
    from nmt.data.store import EncodedSplit

    cfg = resolve_data_config(data_cfg)
    name = cfg[f"{role}_split"]
    text = open_corpus(cfg).read(name)
    return EncodedSplit.from_texts(vocab, text.src, text.tgt, name=name)


def build_parser() -> argparse.ArgumentParser:
    """The `nmt-evaluate` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nmt-evaluate",
        description=(
            "Score checkpoints on a test set: sacreBLEU BLEU and chrF with signatures, BLEU by "
            "source length. Writes hyp.txt, ref.txt and eval.json, prints a summary."
        ),
        epilog=(
            "Positional arguments are checkpoint files (several are averaged on the fly) and "
            "overrides of the checkpoint's data config: data=NAME picks conf/data/NAME.yaml, "
            "data.KEY=VALUE changes one value (e.g. data.tgt=fr data.test_split=test_2016_flickr); "
            f"{' and '.join(MODEL_OVERRIDES)} set evaluation-time position scaling."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="CHECKPOINT|OVERRIDE")
    parser.add_argument("--split", default="test", choices=ROLES, help="default test")
    parser.add_argument(
        "--max-sentences", type=int, default=0, help="score only the first N (default: all)"
    )
    parser.add_argument(
        "--buckets",
        help="upper ends of the source-length buckets in subwords, e.g. "
        f"{','.join(map(str, DEFAULT_LENGTH_EDGES))} for 1-10, 11-20, 21-30, 31-50, 51+ "
        "(default: the checkpoint's decode.length_buckets)",
    )
    parser.add_argument(
        "-o", "--out-dir",
        help="where to write hyp.txt, ref.txt, eval.json (default: CHECKPOINT_DIR/eval_SPLIT)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_decode_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`nmt-evaluate`: checkpoint(s) + test set in; BLEU, chrF and files out."""
    from nmt.checkpoint import (
        CheckpointError,
        average_checkpoints,
        build_from_checkpoint,
        load_checkpoint,
    )
    from nmt.config import ConfigError
    from nmt.data.errors import DataError

    args = build_parser().parse_args(argv)
    checkpoints, overrides = split_inputs(args.inputs)
    try:
        if not checkpoints:
            raise TranslateError("give at least one checkpoint file")
        device = resolve_device(args.device)
        state = average_checkpoints(checkpoints) if len(checkpoints) > 1 else load_checkpoint(checkpoints[0])
        state = dict(state, config=apply_overrides(state["config"], overrides))
        model, cfg, vocab = build_from_checkpoint(checkpoints[0], device, state=state)
        settings = decode_settings(args, cfg)
        edges = parse_buckets(args.buckets) if args.buckets else list(settings.length_buckets)
        split = load_test_split(cfg.data, args.split, vocab)
        out_dir = Path(args.out_dir or Path(checkpoints[0]).resolve().parent / f"eval_{args.split}")
        result = evaluate_split(
            model, vocab, split, beam=settings.beam, alpha=settings.alpha,
            max_len_a=settings.max_len_a, max_len_b=settings.max_len_b,
            max_tokens=settings.max_tokens, device=device, max_sentences=args.max_sentences,
            hyp_path=out_dir / "hyp.txt", length_edges=edges, progress=not args.quiet,
        )
    except (CheckpointError, TranslateError, DataError, ConfigError) as err:
        print(f"nmt-evaluate: {err}", file=sys.stderr)
        return 2
    write_text_atomic(out_dir / "ref.txt", [one_line(t) for t in split.tgt_text[: result["sentences"]]])
    result.update(
        checkpoints=[str(p) for p in checkpoints],
        averaged=len(checkpoints) > 1,
        data={k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "toy"},
        hyp_file=str(out_dir / "hyp.txt"),
        ref_file=str(out_dir / "ref.txt"),
    )
    write_text_atomic(out_dir / "eval.json", [json.dumps(result, indent=2)])
    what = f"{len(checkpoints)} checkpoints averaged" if len(checkpoints) > 1 else checkpoints[0]
    print(f"checkpoint: {what}")
    print(f"data      : {cfg.data.name} {cfg.data.src}->{cfg.data.tgt}, split {split.name}")
    print(format_summary(result))
    print(f"\nwrote {out_dir / 'hyp.txt'}, {out_dir / 'ref.txt'}, {out_dir / 'eval.json'}")
    return 0


def parse_buckets(text: str) -> list[int]:
    """`"10,20,30,50"` -> [10, 20, 30, 50], checked."""
    try:
        edges = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TranslateError(f"--buckets {text!r}: give comma-separated integers, e.g. 10,20,30,50") from None
    if not edges or any(e < 1 for e in edges) or len(set(edges)) != len(edges):
        raise TranslateError(f"--buckets {text!r}: give distinct positive integers, e.g. 10,20,30,50")
    return sorted(edges)


if __name__ == "__main__":
    sys.exit(main())
