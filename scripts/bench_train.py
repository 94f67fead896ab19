"""Training throughput per position encoding on the same real batches, interleaved.

    NMT_DATA_DIR=/path/to/data python scripts/bench_train.py model=small --rounds 7
    python scripts/bench_train.py model=small --encodings absolute,relative --corpus multi30k

One model per encoding (same config, same seed), the same batches for all of them, one
training step (forward + backward + Adam) each in turn: A B C ... A B C ..., after warm-up,
so slow drifts of the machine hit every encoding alike. Reported per encoding: the median
target tokens/s over rounds, and the median of the per-round ratio to `absolute` (ratios
from adjacent runs, not of medians). Model FLOPs utilisation is the estimated training
FLOP/s over the fp32 matmul peak measured in the same process.

Batches: the Multi30k training split (`--corpus multi30k`, needs NMT_DATA_DIR) and/or
newstest2014 EN-DE (`--corpus newstest`, realistic WMT lengths; a SentencePiece model is
trained on it for the benchmark), cut to `--max-tokens` padded positions per batch.
Writes a Markdown table and JSON to `--out-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nmt.config import compose
from nmt.data import EncodedSplit, prepare_data, train_vocabulary
from nmt.data.batching import collate, split_batches
from nmt.model import build_model, parameter_counts
from nmt.train import label_smoothed_loss

VARIANTS = {
    "absolute": ["encoding=absolute"],
    "relative": ["encoding=relative"],
    "relative_keys": ["encoding=relative_keys"],
    "combined": ["encoding=combined"],
    "rotary": ["encoding=rotary"],
    "none": ["encoding=none"],
}


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of a square matmul on this device and thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops(cfg, counts: dict[str, int], batch) -> float:
    """~6 FLOPs per weight per token it sees (forward 2, backward 4): encoder weights see the
    (padded) source, decoder weights and the tied output projection the target; plus the
    attention score and weighted-sum matmuls (4 * Nq * Nk * d per layer forward, x3)."""
    B, S = batch.src.shape
    T, d = batch.tgt_in.size(1), cfg.model.d_model
    dense = 6 * (counts["encoder"] * B * S + (counts["decoder"] + counts["embeddings"]) * B * T)
    attn = 3 * 4 * B * d * (cfg.model.encoder_layers * S * S + cfg.model.decoder_layers * (T * T + T * S))
    return dense + attn


def newstest_split(data_dir: Path, vocab_size: int, work: Path) -> EncodedSplit:
    en = (data_dir / "wmt14" / "newstest2014.en").read_text(encoding="utf-8").splitlines()
    de = (data_dir / "wmt14" / "newstest2014.de").read_text(encoding="utf-8").splitlines()
    vocab = train_vocabulary(en + de, work / "spm.model", vocab_size=vocab_size)
    return EncodedSplit.from_texts(vocab, en, de, name="newstest2014"), vocab.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=small")
    parser.add_argument("--encodings", default=",".join(VARIANTS))
    parser.add_argument("--corpus", default="multi30k,newstest")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=4, help="batches per round (same for all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("bench_results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = Path(os.environ.get("NMT_DATA_DIR", ""))
    names = args.encodings.split(",")
    peak = matmul_peak_flops()
    rows, raw = [], {}
    for corpus in args.corpus.split(","):
        with tempfile.TemporaryDirectory() as work:
            if corpus == "multi30k":
                data = prepare_data(compose(["data=multi30k"]).data)
                split, vocab_size = data.splits["train"], data.vocab.size
            else:
                split, vocab_size = newstest_split(data_dir, 8000, Path(work))
        batches = [
            collate(split, idx)
            for idx in split_batches(split, args.max_tokens, seed=0, epoch=0)[: args.batches]
        ]
        models = {}
        for name in names:
            torch.manual_seed(0)
            cfg = compose([*args.overrides, *VARIANTS[name]])
            model = build_model(cfg, vocab_size).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            models[name] = (cfg, model, optimizer, parameter_counts(model))
        times: dict[str, list[float]] = {n: [] for n in names}
        for round_ in range(args.warmup + args.rounds):
            for name in names:
                cfg, model, optimizer, _ = models[name]
                start = time.perf_counter()
                for batch in batches:
                    loss, _ = label_smoothed_loss(model(batch.src, batch.tgt_in), batch.tgt_out, 0.1)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        tokens = sum(b.tgt_tokens for b in batches)
        for name in names:
            cfg, _, _, counts = models[name]
            flops = sum(training_flops(cfg, counts, b) for b in batches)
            ratios = [a / t for a, t in zip(times["absolute"], times[name], strict=True)] if "absolute" in times else []
            median = statistics.median(times[name])
            rows.append({
                "corpus": corpus, "encoding": name, "tokens_per_s": tokens / median,
                "ratio_to_absolute": statistics.median(ratios) if ratios else None,
                "mfu": flops / median / peak,
            })
        raw[corpus] = {"times": times, "target_tokens_per_round": tokens}
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s; "
        f"overrides: {' '.join(args.overrides) or '(defaults)'}; {args.rounds} rounds.",
        "",
        "| corpus | encoding | target tokens/s | ratio to absolute | MFU |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "—" if r["ratio_to_absolute"] is None else f"{r['ratio_to_absolute']:.3f}"
        lines.append(f"| {r['corpus']} | {r['encoding']} | {r['tokens_per_s']:,.0f} | {ratio} | {r['mfu']:.1%} |")
    table = "\n".join(lines)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_train.md").write_text(table + "\n")
    (args.out_dir / "bench_train.json").write_text(json.dumps({"rows": rows, "raw": raw, "peak_flops": peak}, indent=1))


if __name__ == "__main__":
    main()
