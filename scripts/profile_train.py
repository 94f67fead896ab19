"""Where a training step's time goes: torch.profiler by operator group, fp32 against bf16.

    NMT_DATA_DIR=/path/to/data python scripts/profile_train.py model=small --threads 1
    python scripts/profile_train.py model=small encoding=absolute --precisions bf16

One model (the composed config; `encoding=relative` unless overridden), the trainer's
optimizer and loss, the same real batches as `scripts/bench_train.py` (Multi30k training
pairs and newstest2014 EN-DE lengths). Per corpus and precision: warm-up steps, then
`--steps` steps under the profiler. Every operator's self time is put in one group (matmul,
attention softmax and masks, position terms, layer norm, dropout, the loss over the
vocabulary, optimizer, dtype casts, other element-wise ops); what the operators do not
account for of the profiled wall time is Python and dispatch overhead. The unprofiled step
time (median of `--steps` steps timed without the profiler) is reported beside it, so the
profiler's own cost is visible. Writes profile_train.md and profile_train.json to
`--out-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from nmt.config import compose
from nmt.config_checks import validate
from nmt.dropout import PROFILER_RANGE as DROPOUT_RANGE
from nmt.model import build_model
from nmt.objective import (
    build_optimization,
    label_smoothed_loss,
    projected_label_smoothed_loss,
)
from nmt.runtime import (
    autocast,
    describe_hardware,
    resolve_device,
    tune_cpu_memory,
)
from nmt.throughput import CORPORA, benchmark_batches

# Phases of a step, as record_function ranges: an operator inside "loss" or "optimizer" is
# counted there whatever it is (the loss's gather is not a position term).
PHASES = ("forward", "loss", "backward", "optimizer")
RANGES = (*PHASES, DROPOUT_RANGE)  # every record_function range an operator is counted by
# Operator name fragments -> group, first match wins; names are aten ops without "aten::".
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss over the vocabulary", ("log_softmax", "nll_loss", "cross_entropy")),
    ("matmul", ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "einsum", "mkldnn")),
    ("attention softmax / masks", ("softmax", "masked_fill", "scaled_dot_product", "where")),
    ("position terms (gather / scatter)", ("gather", "scatter", "index", "clamp", "arange")),
    ("layer norm", ("layer_norm",)),
    ("dropout", ("dropout", "bernoulli")),
    ("embeddings", ("embedding",)),
    ("dtype casts / copies", ("_to_copy", "copy_", "to", "clone", "contiguous")),
)
LOSS_GROUP, MATMUL_GROUP, DROPOUT_GROUP = "loss over the vocabulary", "matmul", "dropout"
OPTIMIZER_GROUP = "optimizer (Adam, zero_grad)"
AUTOGRAD_GROUP = "autograd engine (backward nodes)"
ELEMENTWISE_GROUP, OVERHEAD = "other element-wise / reductions", "Python / dispatch overhead"
ORDER = (
    *(name for name, _ in GROUPS),
    OPTIMIZER_GROUP,
    AUTOGRAD_GROUP,
    ELEMENTWISE_GROUP,
    OVERHEAD,
)


def _named_group(name: str) -> str | None:
    bare = name.removeprefix("aten::").lstrip("_")
    for group, fragments in GROUPS:  # a fragment matches whole words of the name: "to", not "atom"
        if any(re.search(rf"(^|_){f}(_|$)", bare) for f in fragments):
            return group
    return None


def op_group(name: str, phase: str | None) -> str:
    """The group of an operator by its name and the step phase it ran in: a matmul is a
    matmul wherever it runs (the fused loss projects inside the loss); every other operator
    of the loss or the optimizer phase belongs to that phase."""
    named = _named_group(name)
    if named == MATMUL_GROUP:
        return named
    if phase == "loss":
        return LOSS_GROUP
    if phase == DROPOUT_RANGE:
        return DROPOUT_GROUP
    if phase == "optimizer":
        return OPTIMIZER_GROUP
    if name.startswith("autograd::") or "Backward" in name:
        return AUTOGRAD_GROUP
    return named or ELEMENTWISE_GROUP


def _phase(event) -> str | None:
    while event is not None:
        if event.name in RANGES:
            return event.name
        event = event.cpu_parent
    return None


def train_step(model, optimizer, batch, precision: str, device, train_cfg) -> None:
    """One training step as the trainer takes it (`objective.batch_loss`), its phases marked
    for the profiler."""
    eps, chunk = train_cfg.label_smoothing, train_cfg.loss_chunk_tokens
    with autocast(device, precision):
        with record_function("forward"):
            out = model(batch.src, batch.tgt_in, project=chunk == 0)
        with record_function("loss"):
            if chunk == 0:
                loss, _ = label_smoothed_loss(out, batch.tgt_out, eps)
            else:
                loss, _ = projected_label_smoothed_loss(
                    out, model.output_weight, batch.tgt_out, eps, chunk
                )
            loss = loss / batch.tgt_tokens
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def profile_steps(cfg, batches, vocab_size: int, precision: str, args, device) -> dict:
    """Unprofiled step times, then the profiled steps' time by operator group."""
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size).to(device).train()
    optimizer, _, _ = build_optimization(model, cfg, device, precision)

    def step(i: int) -> None:
        train_step(model, optimizer, batches[i % len(batches)], precision, device, cfg.train)

    for i in range(args.warmup):
        step(i)
    plain = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(i)
        plain.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for i in range(args.steps):
            step(i)
        profiled = time.perf_counter() - start
    by_group: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for event in prof.events():
        # A range's own time is Python between its operators: the overhead row counts it.
        if event.name in RANGES or event.device_type != torch.autograd.DeviceType.CPU:
            continue
        self_us = event.self_cpu_time_total
        if self_us <= 0:
            continue
        by_group[op_group(event.name, _phase(event))] += self_us / 1e6
        by_op[event.name] += self_us / 1e6
    by_group[OVERHEAD] = max(profiled - sum(by_group.values()), 0.0)
    tokens = sum(batches[i % len(batches)].tgt_tokens for i in range(args.steps))
    return {
        "step_seconds_median": statistics.median(plain),
        "tokens_per_s": tokens / sum(plain),
        "profiled_seconds": profiled,
        "groups": {g: by_group.get(g, 0.0) / profiled for g in ORDER},
        "top_ops": sorted(by_op.items(), key=lambda kv: -kv[1])[: args.top],
    }


def markdown(results: dict, header: str) -> str:
    columns = list(results)
    lines = [
        header,
        "",
        "| share of the profiled step | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for group in ORDER:
        cells = [f"{results[c]['groups'][group]:.1%}" for c in columns]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    lines.append(
        "| **step, unprofiled (median)** | "
        + " | ".join(f"{results[c]['step_seconds_median'] * 1e3:,.0f} ms" for c in columns)
        + " |"
    )
    lines.append(
        "| **target tokens/s, unprofiled** | "
        + " | ".join(f"{results[c]['tokens_per_s']:,.0f}" for c in columns)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=small")
    parser.add_argument("--corpus", default=",".join(CORPORA))
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="profiled (and timed) steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--top", type=int, default=15, help="operators listed in the JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", type=Path, default=Path("bench_results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not os.environ.get("NMT_DATA_DIR"):
        sys.exit("profile_train: set NMT_DATA_DIR to the directory holding multi30k/ and wmt14/")
    overrides = (
        args.overrides
        if any(o.startswith("encoding=") for o in args.overrides)
        else [
            *args.overrides,
            "encoding=relative",
        ]
    )
    cfg = compose(overrides)
    validate(cfg)
    device = resolve_device(args.device)
    tune_cpu_memory(device, cfg.train.kernel_cache_entries, cfg.train.malloc_keep_mib)
    results = {}
    for corpus in args.corpus.split(","):
        batches, vocab_size = benchmark_batches(
            corpus, Path(os.environ["NMT_DATA_DIR"]), args.max_tokens, args.batches, device
        )
        for precision in args.precisions.split(","):
            print(f"profiling {corpus} {precision}", file=sys.stderr, flush=True)
            results[f"{corpus} {precision}"] = profile_steps(
                cfg, batches, vocab_size, precision, args, device
            )
    header = (
        f"{describe_hardware(device)}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s); overrides: {' '.join(overrides)}; {args.batches} batches of <= "
        f"{args.max_tokens} padded tokens, {args.warmup} warm-up + {args.steps} profiled steps."
    )
    table = markdown(results, header)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "profile_train.md").write_text(table)
    meta = {"header": header, "overrides": overrides, "args": vars(args) | {"out_dir": None}}
    (args.out_dir / "profile_train.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1)
    )


if __name__ == "__main__":
    main()
