"""Beam-search speed: the incremental cache against recomputing the whole prefix, and
decoding in fp32 against bf16.

    NMT_DATA_DIR=/path/to/data python scripts/bench_decode.py model=base --limit 25 --max-len-b 0
    python scripts/bench_decode.py --input my.en --encodings relative,rotary model=base
    python scripts/bench_decode.py --checkpoint CKPT --precisions fp32,bf16 --no-full-prefix

For each encoding, a model is built from the composed config (positional `key=value`
overrides, e.g. `model=base`) with random weights, and the same sentences are decoded
twice with the same search: with the cache (`decode_step`) and with `use_cache=False`
(`model.decode` over the whole prefix at every step). Both runs must give the same
hypotheses (except where `modes_must_agree` says they part by design, marked (a)); the
table reports how many do. The subword vocabulary is trained on the
input text itself (`--vocab-size`), or taken with the model from `--checkpoint`. Each input
(default: newstest2014.en, realistic WMT lengths, and the Multi30k test set, short captions)
is a block of rows; both modes are warmed up on a few sentences before they are timed.
`--precisions fp32,bf16` adds a row per precision: the cached search under autocast, its
hypotheses compared with fp32's (they can differ in a few sentences).

Random weights rarely predict EOS, so a hypothesis usually runs to max_len = a * src + b:
`--max-len-b 0` gives outputs about as long as the sources, as a trained model's are.
Prints a Markdown table and writes it with the raw numbers as JSON to `--out-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from nmt.config import (
    MALLOC_KEEP_MAX_MIB,
    MALLOC_KEEP_MIB,
    ConfigError,
    DataConfig,
    DecodeConfig,
    compose,
    decode_settings,
)
from nmt.decoding import DECODE_PRECISIONS, translate_ids
from nmt.model import build_model
from nmt.presets import training_presets
from nmt.runtime import describe_hardware, resolve_device, synchronize, tune_cpu_memory
from nmt.special_ids import EOS
from nmt.textio import read_lines, write_text_atomic

DEFAULT_INPUTS = ("wmt14/newstest2014.en", "multi30k/test_2016_flickr.en.gz")
WARMUP_SENTENCES = 4


def default_inputs() -> list[Path]:
    """newstest2014.en and the Multi30k test set under $NMT_DATA_DIR, if that variable is set."""
    root = os.environ.get("NMT_DATA_DIR")
    return [Path(root) / name for name in DEFAULT_INPUTS] if root else []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = DecodeConfig()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model=base")
    p.add_argument(
        "--input",
        type=Path,
        action="append",
        help="source text, .gz allowed; repeat for several (default: $NMT_DATA_DIR/"
        + " and ".join(DEFAULT_INPUTS)
        + ")",
    )
    p.add_argument("--limit", type=int, default=0, help="decode only the first N non-empty lines")
    p.add_argument(
        "--encodings",
        default=",".join(training_presets()),
        help="comma-separated presets (default: every preset that trains a different model)",
    )
    p.add_argument("--checkpoint", help="use this model and vocabulary instead (one encoding)")
    p.add_argument("--vocab-size", type=int, default=DataConfig().vocab_size)
    p.add_argument("--beam", type=int, default=d.beam)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--max-len-a", type=float, default=d.max_len_a)
    p.add_argument("--max-len-b", type=int, default=d.max_len_b)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--precisions",
        default="fp32",
        help="comma-separated: fp32 (with the full-prefix check), bf16, fp16 (each compared "
        "with fp32's hypotheses)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time each precision with the decoder step compiled (nmt-translate --compile)",
    )
    p.add_argument(
        "--no-full-prefix",
        dest="full_prefix",
        action="store_false",
        help="skip the full-prefix baseline (slow on long inputs); only the cached search",
    )
    p.add_argument(
        "--malloc-keep-mib",
        type=int,
        default=MALLOC_KEEP_MIB,
        help="CPU: glibc keeps freed blocks up to this size, as nmt-translate does; 0: glibc's "
        f"defaults, every step's logits mapped afresh (default {MALLOC_KEEP_MIB})",
    )
    p.add_argument("--out-dir", type=Path, default=Path("results"), help="default ./results")
    args = p.parse_args(argv)
    args.precisions = args.precisions.split(",")
    if set(args.precisions) - set(DECODE_PRECISIONS):
        p.error(f"--precisions takes {', '.join(DECODE_PRECISIONS)}")
    if not 0 <= args.malloc_keep_mib <= MALLOC_KEEP_MAX_MIB:
        p.error(f"--malloc-keep-mib takes 0 to {MALLOC_KEEP_MAX_MIB}")
    try:
        args.settings = decode_settings(
            None,
            beam=args.beam,
            alpha=args.alpha,
            max_len_a=args.max_len_a,
            max_len_b=args.max_len_b,
            max_tokens=args.max_tokens,
        )
    except ConfigError as err:
        p.error(str(err))
    return args


def train_vocab(lines: list[str], size: int):
    """A SentencePiece vocabulary trained on the benchmark text (speed only needs lengths)."""
    from nmt.data.vocab import train_vocabulary

    with tempfile.TemporaryDirectory() as tmp:
        vocab = train_vocabulary(lines, Path(tmp) / "spm.model", vocab_size=size)
        return type(vocab).from_bytes(vocab.model_bytes)


def timed(model, src_ids, args, device, use_cache: bool, precision: str = "fp32", compiled=False):
    synchronize(device)
    start = time.perf_counter()
    out = translate_ids(
        model,
        src_ids,
        args.settings,
        device=device,
        use_cache=use_cache,
        precision=precision,
        compile=compiled,
    )
    synchronize(device)
    return out, time.perf_counter() - start


def modes_must_agree(cfg) -> bool:
    """Whether cached and full-prefix decoding must give the same hypotheses under `cfg`.

    Not with dynamic rotary scaling and more than one decoder layer: the cache keeps the
    earlier positions' hidden states, computed with the factor of their own step, where
    the full prefix recomputes them all with the current one (they part past
    encoding.rotary_train_len; one layer re-rotates its raw keys and agrees).
    """
    enc = cfg.encoding
    dynamic = enc.name == "rotary" and str(enc.rotary_scaling).startswith("dynamic")
    return not (dynamic and cfg.model.decoder_layers > 1)


def _same(a, b) -> int:
    return sum([h.tokens for h in x] == [h.tokens for h in y] for x, y in zip(a, b, strict=True))


def bench_one(
    corpus: str, name: str, model, src_ids, args, device, must_agree: bool = True
) -> list[dict]:
    """One row per precision (and compiled, with --compile): the cached search's speed; fp32
    eager also against the full prefix (must give the same hypotheses), the others against
    fp32 eager's hypotheses. Compiling happens in the warm-up, on a few sentences."""
    model.to(device).eval()
    n, rows, reference = len(src_ids), [], None
    variants = [(p, c) for c in (False, True)[: 1 + args.compile] for p in args.precisions]
    for precision, compiled in variants:
        eager_fp32 = precision == "fp32" and not compiled
        modes = (True, False) if eager_fp32 and args.full_prefix else (True,)
        if compiled:
            torch._dynamo.reset()  # each variant compiles its own graph, timed apart
        for use_cache in modes:  # kernels, allocator and position tables warm for every mode
            # Compiled: a second batch of another size, so the dynamic graph is built here.
            sizes = (WARMUP_SENTENCES, WARMUP_SENTENCES - 1) if compiled else (WARMUP_SENTENCES,)
            for size in sizes:
                timed(model, src_ids[:size], args, device, use_cache, precision, compiled)
        cached, t_cache = timed(model, src_ids, args, device, True, precision, compiled)
        tokens = sum(len(h[0].tokens) + 1 for h in cached)  # output tokens incl. EOS
        row = {
            "corpus": corpus,
            "encoding": name,
            "precision": precision,
            "compiled": compiled,
            "sentences": n,
            "output_tokens": tokens,
            "cache_seconds": round(t_cache, 3),
            "cache_sent_per_s": round(n / t_cache, 2),
            "cache_tok_per_s": round(tokens / t_cache, 1),
            "identical": None,
            "compared_with": None,
            "must_agree": must_agree,
        }
        if eager_fp32:
            reference = cached
        if len(modes) == 2:
            full, t_full = timed(model, src_ids, args, device, False, precision)
            row.update(
                identical=_same(cached, full),
                compared_with="full prefix",
                full_seconds=round(t_full, 3),
                full_sent_per_s=round(n / t_full, 2),
                full_tok_per_s=round(tokens / t_full, 1),
                speedup=round(t_full / t_cache, 2),
            )
        elif reference is not None and not eager_fp32:
            # bf16 is expected to differ in a few sentences (no must_agree); compiled fp32
            # should not.
            row.update(
                identical=_same(cached, reference),
                compared_with="fp32 eager",
                must_agree=precision == "fp32",
            )
        same = "" if row["identical"] is None else f", identical {row['identical']}/{n}"
        print(
            f"{corpus} {name:>13} {precision}{' compiled' if compiled else ''}: "
            f"cache {t_cache:7.1f} s, "
            f"{n / t_cache:.1f} sentences/s{same}"
            + (f" with the {row['compared_with']}" if row["compared_with"] else ""),
            file=sys.stderr,
        )
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| corpus | encoding | precision | compiled | sentences | identical (with) "
        "| cache sent/s | cache tok/s | full-prefix sent/s | full-prefix tok/s | speed-up |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        same = "—"
        if r["identical"] is not None:
            same = f"{r['identical']}/{r['sentences']} ({r['compared_with']})"
            if r["compared_with"] == "full prefix" and not r["must_agree"]:
                same += " (a)"
        full = (
            f"{r['full_sent_per_s']:.2f} | {r['full_tok_per_s']:.0f} | {r['speedup']:.2f}x"
            if "full_seconds" in r
            else "— | — | —"
        )
        lines.append(
            f"| {r['corpus']} | {r['encoding']} | {r['precision']} "
            f"| {'yes' if r['compiled'] else 'no'} | {r['sentences']} | {same} "
            f"| {r['cache_sent_per_s']:.2f} | {r['cache_tok_per_s']:.0f} | {full} |"
        )
    if any(r["compared_with"] == "full prefix" and not r["must_agree"] for r in rows):
        lines += [
            "",
            "(a) need not match: dynamic rotary scaling with more than one decoder layer "
            "(see `modes_must_agree`).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sources = args.input or default_inputs()
    if not sources:
        sys.exit(
            "bench_decode: give --input FILE, or set NMT_DATA_DIR to the directory holding wmt14/"
        )
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        sys.exit(
            f"bench_decode: {', '.join(missing)} does not exist "
            "(give --input FILE or fix NMT_DATA_DIR)"
        )
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    # as nmt-translate does; the environment's thresholds win (then 0 MiB are applied here)
    kept_mib = tune_cpu_memory(device, malloc_keep_mib=args.malloc_keep_mib)[1]
    texts = {s: [line.strip() for line in read_lines(str(s)) if line.strip()] for s in sources}
    if args.checkpoint:
        from nmt.checkpoint import build_from_checkpoint

        model, cfg, vocab = build_from_checkpoint(args.checkpoint, device)
        models = [(cfg.encoding.name, lambda: model, modes_must_agree(cfg))]
    else:
        vocab = train_vocab([line for lines in texts.values() for line in lines], args.vocab_size)

        def make(cfg):
            def build():
                torch.manual_seed(args.seed)
                return build_model(cfg, vocab.size)

            return build

        configs = {
            e: compose([*args.overrides, f"encoding={e}"]) for e in args.encodings.split(",")
        }
        models = [(e, make(cfg), modes_must_agree(cfg)) for e, cfg in configs.items()]
    rows, meta = [], []
    for source, lines in texts.items():
        corpus_rows, corpus_meta = bench_corpus(
            source.name.removesuffix(".gz"), lines, vocab, models, args, device
        )
        rows += corpus_rows
        meta.append(corpus_meta)
    table = markdown(rows)
    print(table)
    run = {
        "inputs": meta,
        "overrides": args.overrides,
        "beam": args.beam,
        "alpha": args.alpha,
        "max_len_a": args.max_len_a,
        "max_len_b": args.max_len_b,
        "max_tokens": args.max_tokens,
        "device": str(device),
        "hardware": describe_hardware(device),
        "torch": torch.__version__,
        "checkpoint": args.checkpoint,
        "precisions": args.precisions,
        "threads": torch.get_num_threads(),
        "malloc_keep_mib": kept_mib,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"Beam {args.beam}, alpha {args.alpha}, "
        f"max_len {args.max_len_a} * src + {args.max_len_b}, "
        f"{run['hardware']}, torch {torch.__version__}, "
        f"overrides: {' '.join(args.overrides) or '(defaults)'}. "
        + "; ".join(
            f"{m['input']}: {m['sentences']} sentences, {m['source_tokens'] / m['sentences']:.1f} "
            "source subwords on average"
            for m in meta
        )
        + "."
    )
    write_text_atomic(args.out_dir / "bench_decode.md", [header, "", table])
    write_text_atomic(
        args.out_dir / "bench_decode.json", [json.dumps({"meta": run, "rows": rows}, indent=2)]
    )
    print(f"wrote {args.out_dir / 'bench_decode.md'} and .json", file=sys.stderr)
    must = [r for r in rows if r["must_agree"] and r["compared_with"]]
    return 0 if all(r["identical"] == r["sentences"] for r in must) else 1


def bench_corpus(
    corpus: str, lines: list[str], vocab, models, args, device
) -> tuple[list[dict], dict]:
    """Every model, cached and full prefix, on the first --limit lines of one corpus."""
    bench_lines = lines[: args.limit] if args.limit > 0 else lines
    src_ids = [[*vocab.encode(line), EOS] for line in bench_lines]
    src_tokens = sum(len(s) for s in src_ids)
    print(
        f"{len(src_ids)} sentences, {src_tokens / len(src_ids):.1f} source subwords on average, "
        f"beam {args.beam}, max_len {args.max_len_a} * src + {args.max_len_b}, device {device}, "
        f"{torch.get_num_threads()} threads",
        file=sys.stderr,
    )
    rows = [
        row
        for name, build, agree in models
        for row in bench_one(corpus, name, build(), src_ids, args, device, agree)
    ]
    meta = {
        "input": corpus,
        "sentences": len(src_ids),
        "source_tokens": src_tokens,
        "vocab_size": vocab.size,
    }
    return rows, meta


if __name__ == "__main__":
    sys.exit(main())
