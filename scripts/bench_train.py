"""Training throughput per position encoding, precision and compilation, on the same real
batches, interleaved.

    NMT_DATA_DIR=/path/to/data python scripts/bench_train.py model=small --rounds 7
    python scripts/bench_train.py model=small --encodings absolute,relative --corpus multi30k
    python scripts/bench_train.py model=small --precisions fp32,bf16 --compile off,on,static

One model per variant (encoding x precision x compiled; same config, same seed), the same
batches for all of them, each variant's share of a round (the trainer's step: forward, loss,
backward, Adam, on every batch) in turn, after warm-up (which is where torch.compile
compiles), so slow drifts of the machine hit every variant alike; the order rotates from
round to round. Reported per variant: the median target tokens/s over rounds, the median of
the per-round ratio to `absolute` of the same precision and compilation, and to the same
encoding in fp32 eager (ratios from the same round, seconds apart, not of medians), with
the spread of the first (min-max over rounds). Model FLOPs utilisation is the estimated
training FLOP/s over the matmul peak of the variant's precision, measured in this process.

Batches: the Multi30k training split (`--corpus multi30k`, needs NMT_DATA_DIR) and/or
newstest2014 EN-DE (`--corpus newstest`, realistic WMT lengths; a SentencePiece model is
trained on it for the benchmark), cut to `--max-tokens` padded positions per batch.
Config overrides apply to every variant (`train.loss_chunk_tokens=0`: the loss over whole
logits). Writes a Markdown table and JSON to `--out-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from nmt.config import compose, encoding_presets
from nmt.config_checks import validate
from nmt.model import build_model, parameter_counts
from nmt.objective import batch_loss, build_optimization
from nmt.presets import training_presets
from nmt.runtime import (
    autocast,
    describe_hardware,
    resolve_device,
    synchronize,
    tune_cpu_memory,
)
from nmt.throughput import CORPORA, benchmark_batches, matmul_peak_flops, training_flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --compile modes: eager; torch.compile as train.compile=true does (dynamic shapes after the
# second batch shape); one static graph per batch shape (what padded length buckets buy).
COMPILE_MODES = {"off": "no", "on": "yes", "static": "static shapes"}


def variant_name(encoding: str, precision: str, compiled: str) -> str:
    return f"{encoding} {precision}{'' if compiled == 'off' else ' compiled ' + compiled}"


def compiled_forward(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    if mode == "off":
        return model
    return torch.compile(model, dynamic=False) if mode == "static" else torch.compile(model)


def build_variant(overrides, encoding, precision, compiled, vocab_size, device) -> dict:
    torch.manual_seed(0)
    cfg = compose([*overrides, f"encoding={encoding}"])
    model = build_model(cfg, vocab_size).to(device).train()
    optimizer, _, _ = build_optimization(model, cfg, device, precision)
    return {
        "cfg": cfg,
        "model": model,
        "forward": compiled_forward(model, compiled),
        "optimizer": optimizer,
        "counts": parameter_counts(model),
        "precision": precision,
    }


def train_steps(v: dict, batches, device) -> None:
    """The trainer's step on each batch (loss summed over tokens, divided once)."""
    t = v["cfg"].train
    for batch in batches:
        with autocast(device, v["precision"]):
            loss, _ = batch_loss(
                v["forward"],
                v["model"].output_weight,
                batch,
                t.label_smoothing,
                t.loss_chunk_tokens,
            )
        (loss / batch.tgt_tokens).backward()
        if t.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(v["model"].parameters(), t.clip_norm)
        v["optimizer"].step()
        v["optimizer"].zero_grad(set_to_none=True)


def round_ratios(times: dict[str, list[float]], ref: str, name: str) -> list[float]:
    """Per-round speed of `name` relative to `ref` (>1: faster), from the same rounds."""
    return [a / t for a, t in zip(times[ref], times[name], strict=True)] if ref in times else []


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=small")
    parser.add_argument(
        "--encodings",
        default=",".join(training_presets()),
        help="comma-separated presets (default: every preset that trains a different model)",
    )
    parser.add_argument("--corpus", default=",".join(CORPORA))
    parser.add_argument("--precisions", default="fp32", help="fp32, bf16 or both: fp32,bf16")
    parser.add_argument(
        "--compile",
        default="off",
        help="off, on (dynamic shapes, as train.compile=true), static (a graph per batch shape), "
        "or a list: off,on,static",
    )
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=4, help="batches per round (same for all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--out-dir", type=Path, default=Path("bench_results"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not os.environ.get("NMT_DATA_DIR"):
        sys.exit("bench_train: set NMT_DATA_DIR to the directory holding multi30k/ and wmt14/")
    data_dir = Path(os.environ["NMT_DATA_DIR"])
    names = args.encodings.split(",")
    unknown = [n for n in names if n not in encoding_presets()]
    if unknown:
        sys.exit(
            f"bench_train: unknown encoding {', '.join(unknown)}; "
            f"choose from {', '.join(encoding_presets())}"
        )
    precisions = args.precisions.split(",")
    if set(precisions) - set(DTYPES):
        sys.exit(f"bench_train: --precisions takes {', '.join(DTYPES)}")
    compiles = args.compile.split(",")
    if set(compiles) - set(COMPILE_MODES):
        sys.exit(f"bench_train: --compile takes {', '.join(COMPILE_MODES)}")
    if "static" in compiles:  # a graph per batch shape: past Dynamo's limit it runs eager
        torch._dynamo.config.recompile_limit = max(
            torch._dynamo.config.recompile_limit, args.batches
        )
    device = resolve_device(args.device)
    # As nmt-train does (train.malloc_keep_mib); pass train.malloc_keep_mib=0 for glibc's defaults.
    base = compose(args.overrides)
    validate(base)
    t = base.train
    keeps_freed = tune_cpu_memory(device, t.kernel_cache_entries, t.malloc_keep_mib)[1] > 0
    peaks = {p: matmul_peak_flops(device, DTYPES[p]) for p in precisions}
    combos = [(e, p, c) for p in precisions for c in compiles for e in names]
    rows, raw = [], {}
    for corpus in args.corpus.split(","):
        batches, vocab_size = benchmark_batches(
            corpus, data_dir, args.max_tokens, args.batches, device
        )
        variants = {
            variant_name(*combo): build_variant(args.overrides, *combo, vocab_size, device)
            for combo in combos
        }
        order = list(variants)
        times: dict[str, list[float]] = {n: [] for n in order}
        started = time.perf_counter()
        for round_ in range(args.warmup + args.rounds):
            for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
                synchronize(device)
                start = time.perf_counter()
                train_steps(variants[name], batches, device)
                synchronize(device)
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - start)
            print(
                f"{corpus}: round {round_ + 1}/{args.warmup + args.rounds}"
                f"{' (warm-up)' if round_ < args.warmup else ''}, "
                f"{time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        tokens = sum(b.tgt_tokens for b in batches)
        for encoding, precision, compiled in combos:
            name = variant_name(encoding, precision, compiled)
            v = variants[name]
            flops = sum(training_flops(v["cfg"], v["counts"], b) for b in batches)
            to_abs = round_ratios(times, variant_name("absolute", precision, compiled), name)
            to_fp32 = round_ratios(times, variant_name(encoding, "fp32", "off"), name)
            median = statistics.median(times[name])
            rows.append(
                {
                    "corpus": corpus,
                    "encoding": encoding,
                    "precision": precision,
                    "compiled": compiled != "off",
                    "compile_mode": compiled,
                    "tokens_per_s": tokens / median,
                    "ratio_to_absolute": statistics.median(to_abs) if to_abs else None,
                    "ratio_to_absolute_range": [min(to_abs), max(to_abs)] if to_abs else None,
                    "ratio_to_fp32_eager": statistics.median(to_fp32) if to_fp32 else None,
                    "mfu": flops / median / peaks[precision],
                }
            )
        raw[corpus] = {
            "times": times,
            "target_tokens_per_round": tokens,
            "mean_src_len": statistics.mean(b.src.size(1) for b in batches),
            "mean_tgt_len": statistics.mean(b.tgt_in.size(1) for b in batches),
        }
        del variants
    peak_text = ", ".join(f"{p} {peaks[p] / 1e9:,.0f}" for p in precisions)
    lines = [
        f"{describe_hardware(device)}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s); matmul peak GFLOP/s: {peak_text}; overrides: "
        f"{' '.join(args.overrides) or '(defaults)'}; {args.batches} batches of <= "
        f"{args.max_tokens} padded tokens per round, {args.warmup} warm-up + {args.rounds} "
        f"timed rounds{'; glibc keeps freed blocks' if keeps_freed else ''}.",
        "",
        "| corpus | encoding | precision | compiled | target tokens/s "
        "| ratio to absolute (min-max) | ratio to fp32 eager | MFU |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]

    def fmt(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    for r in rows:
        spread = r["ratio_to_absolute_range"]
        ratio = fmt(r["ratio_to_absolute"])
        ratio += f" ({spread[0]:.3f}-{spread[1]:.3f})" if spread else ""
        lines.append(
            f"| {r['corpus']} | {r['encoding']} | {r['precision']} "
            f"| {COMPILE_MODES[r['compile_mode']]} | {r['tokens_per_s']:,.0f} | {ratio} "
            f"| {fmt(r['ratio_to_fp32_eager'])} | {r['mfu']:.1%} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_train.md").write_text(table + "\n")
    meta = {
        "hardware": describe_hardware(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precisions": precisions,
        "compile": args.compile,
        "overrides": args.overrides,
        "batches": args.batches,
        "max_tokens": args.max_tokens,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "malloc_keeps_freed": keeps_freed,
    }
    (args.out_dir / "bench_train.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "raw": raw, "peak_flops": peaks}, indent=1)
    )


if __name__ == "__main__":
    main()
