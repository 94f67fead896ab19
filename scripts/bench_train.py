"""Training throughput per position encoding on the same real batches, interleaved.

    NMT_DATA_DIR=/path/to/data python scripts/bench_train.py model=small --rounds 7
    python scripts/bench_train.py model=small --encodings absolute,relative --corpus multi30k
    python scripts/bench_train.py model=small --precision bf16   # CPUs with AMX / AVX512-BF16

One model per encoding (same config, same seed), the same batches for all of them, each
encoding's share of a round (forward + backward + Adam on every batch) in turn, after
warm-up, so slow drifts of the machine hit every encoding alike; the order rotates from
round to round so no encoding always runs first or after the same neighbour. Reported per
encoding: the median target tokens/s over rounds, the median of the per-round ratio to
`absolute` and to `relative` (ratios from the same round, seconds apart, not of medians),
and the spread of the first ratio (min-max over rounds). Model FLOPs utilisation is the
estimated training FLOP/s over the matmul peak measured in the same process and precision.

Batches: the Multi30k training split (`--corpus multi30k`, needs NMT_DATA_DIR) and/or
newstest2014 EN-DE (`--corpus newstest`, realistic WMT lengths; a SentencePiece model is
trained on it for the benchmark), cut to `--max-tokens` padded positions per batch.
Writes a Markdown table and JSON to `--out-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nmt.config import compose, encoding_presets, validate
from nmt.data import EncodedSplit, prepare_data, train_vocabulary
from nmt.data.batching import collate, split_batches
from nmt.model import build_model, parameter_counts
from nmt.objective import label_smoothed_loss
from nmt.presets import training_presets
from nmt.runtime import (
    autocast,
    describe_hardware,
    keep_freed_cpu_memory,
    resolve_device,
    synchronize,
)


def matmul_peak_flops(
    device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5
) -> float:
    """Best FLOP/s of a square matmul in `dtype` on this device and thread count."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops(cfg, counts: dict[str, int], batch) -> float:
    """~6 FLOPs per weight per token it sees (forward 2, backward 4): encoder weights see the
    (padded) source, decoder weights and the tied output projection the target; plus the
    attention score and weighted-sum matmuls (4 * Nq * Nk * d per layer forward, x3)."""
    B, S = batch.src.shape
    T, d = batch.tgt_in.size(1), cfg.model.d_model
    dense = 6 * (counts["encoder"] * B * S + (counts["decoder"] + counts["embeddings"]) * B * T)
    layers = cfg.model.encoder_layers * S * S + cfg.model.decoder_layers * (T * T + T * S)
    attn = 3 * 4 * B * d * layers
    return dense + attn


def round_ratios(times: dict[str, list[float]], ref: str, name: str) -> list[float]:
    """Per-round speed of `name` relative to `ref` (>1: faster), from the same rounds."""
    return [a / t for a, t in zip(times[ref], times[name], strict=True)] if ref in times else []


def newstest_split(data_dir: Path, vocab_size: int, work: Path) -> tuple[EncodedSplit, int]:
    """newstest2014 EN-DE as a split, with a SentencePiece model trained on it; (split, vocab
    size)."""
    en = (data_dir / "wmt14" / "newstest2014.en").read_text(encoding="utf-8").splitlines()
    de = (data_dir / "wmt14" / "newstest2014.de").read_text(encoding="utf-8").splitlines()
    vocab = train_vocabulary(en + de, work / "spm.model", vocab_size=vocab_size)
    return EncodedSplit.from_texts(vocab, en, de, name="newstest2014"), vocab.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=small")
    parser.add_argument(
        "--encodings",
        default=",".join(training_presets()),
        help="comma-separated presets (default: every preset that trains a different model)",
    )
    parser.add_argument("--corpus", default="multi30k,newstest")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=4, help="batches per round (same for all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: autocast, as train.precision=bf16",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--out-dir", type=Path, default=Path("bench_results"))
    args = parser.parse_args()
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
    device = resolve_device(args.device)
    # As nmt-train does (train.malloc_keep_mib); pass train.malloc_keep_mib=0 for glibc's defaults.
    base = compose(args.overrides)
    validate(base)
    keeps_freed = device.type == "cpu" and keep_freed_cpu_memory(base.train.malloc_keep_mib) > 0
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak_flops(device, dtype)
    rows, raw = [], {}
    for corpus in args.corpus.split(","):
        with tempfile.TemporaryDirectory() as work:
            if corpus == "multi30k":
                data = prepare_data(compose(["data=multi30k"]).data)
                split, vocab_size = data.splits["train"], data.vocab.size
            else:
                split, vocab_size = newstest_split(data_dir, 8000, Path(work))
        batches = [
            collate(split, idx).to(device)
            for idx in split_batches(split, args.max_tokens, seed=0, epoch=0)[: args.batches]
        ]
        models = {}
        for name in names:
            torch.manual_seed(0)
            cfg = compose([*args.overrides, f"encoding={name}"])
            model = build_model(cfg, vocab_size).to(device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            models[name] = (cfg, model, optimizer, parameter_counts(model))
        times: dict[str, list[float]] = {n: [] for n in names}
        started = time.perf_counter()
        for round_ in range(args.warmup + args.rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                cfg, model, optimizer, _ = models[name]
                synchronize(device)
                start = time.perf_counter()
                for batch in batches:
                    with autocast(device, args.precision):
                        logits = model(batch.src, batch.tgt_in)
                    loss, _ = label_smoothed_loss(logits, batch.tgt_out, 0.1)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
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

        for name in names:
            cfg, _, _, counts = models[name]
            flops = sum(training_flops(cfg, counts, b) for b in batches)
            to_abs = round_ratios(times, "absolute", name)
            to_rel = round_ratios(times, "relative", name)
            median = statistics.median(times[name])
            rows.append(
                {
                    "corpus": corpus,
                    "encoding": name,
                    "tokens_per_s": tokens / median,
                    "ratio_to_absolute": statistics.median(to_abs) if to_abs else None,
                    "ratio_to_absolute_range": [min(to_abs), max(to_abs)] if to_abs else None,
                    "ratio_to_relative": statistics.median(to_rel) if to_rel else None,
                    "mfu": flops / median / peak,
                }
            )
        raw[corpus] = {
            "times": times,
            "target_tokens_per_round": tokens,
            "mean_src_len": statistics.mean(b.src.size(1) for b in batches),
            "mean_tgt_len": statistics.mean(b.tgt_in.size(1) for b in batches),
        }
    lines = [
        f"{describe_hardware(device)}, torch {torch.__version__}, {args.precision}; "
        f"{args.precision} matmul peak {peak / 1e9:,.0f} GFLOP/s; overrides: "
        f"{' '.join(args.overrides) or '(defaults)'}; {args.batches} batches of <= "
        f"{args.max_tokens} "
        f"padded tokens per round, {args.warmup} warm-up + {args.rounds} timed rounds"
        f"{'; glibc keeps freed blocks' if keeps_freed else ''}.",
        "",
        "| corpus | encoding | target tokens/s | ratio to absolute (min-max) "
        "| ratio to relative | MFU |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def fmt(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    for r in rows:
        spread = r["ratio_to_absolute_range"]
        ratio = fmt(r["ratio_to_absolute"])
        ratio += f" ({spread[0]:.3f}-{spread[1]:.3f})" if spread else ""
        lines.append(
            f"| {r['corpus']} | {r['encoding']} | {r['tokens_per_s']:,.0f} | {ratio} "
            f"| {fmt(r['ratio_to_relative'])} | {r['mfu']:.1%} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_train.md").write_text(table + "\n")
    meta = {
        "hardware": describe_hardware(device),
        "torch": torch.__version__,
        "precision": args.precision,
        "overrides": args.overrides,
        "batches": args.batches,
        "max_tokens": args.max_tokens,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "malloc_keeps_freed": keeps_freed,
    }
    (args.out_dir / "bench_train.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "raw": raw, "peak_flops": peak}, indent=1)
    )


if __name__ == "__main__":
    main()
