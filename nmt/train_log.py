"""What training reports as it goes: metrics.jsonl rows, TensorBoard scalars, the progress line,
and the windows of steps its loss and throughput are averaged over."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from nmt.errors import TrainingError

# Training's messages keep the command's logger name, whichever module emits them.
log = logging.getLogger("nmt.train")


class Window:
    """Loss sums and token counts since the last log line (device tensors: no sync per step)."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None
        self.nll: torch.Tensor | None = None
        self.tokens = 0
        self.started = time.perf_counter()
        self.seconds = 0.0

    def exclude(self, seconds: float) -> None:
        """Leave time out of the window's clock (validation and saving are not training)."""
        self.started += seconds

    def add(self, loss: torch.Tensor, nll: torch.Tensor, tokens: int) -> None:
        self.loss = loss if self.loss is None else self.loss + loss
        self.nll = nll if self.nll is None else self.nll + nll
        self.tokens += tokens

    def flush(self) -> tuple[Any, Any, int]:
        """(loss sum, NLL sum, tokens) of the window; starts the next one."""
        out = (self.loss, self.nll, self.tokens)
        self.seconds = time.perf_counter() - self.started
        self.loss = self.nll = None
        self.tokens = 0
        self.started = time.perf_counter()
        return out


def hms(seconds: float) -> str:
    """A duration as 4m05s or 1h02m03s; "?" when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class MetricsLog:
    """Appends records to metrics.jsonl and, when enabled, to TensorBoard; off on ranks > 0.

    A run that starts at `step` (0, or a resumed checkpoint's) first drops what a killed
    launch logged past it: those steps are trained, and logged, again.
    """

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, step: int) -> None:
        self.path, self.enabled = run_dir / "metrics.jsonl", enabled
        if enabled:
            drop_rows_after(self.path, step)
        # TensorBoard hides the events of steps >= purge_step that earlier launches wrote.
        self.tb = tensorboard_writer(run_dir, step + 1) if (tensorboard and enabled) else None

    def record(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(values) + "\n")
        if self.tb is not None:
            split = values.get("split", "train")
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"{split}/{key}", value, values["step"])


def tensorboard_writer(run_dir: Path, purge_step: int | None = None) -> Any:
    """A SummaryWriter into run_dir/tensorboard, or None without the `tb` extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


def drop_rows_after(path: Path, step: int) -> int:
    """Rewrite metrics.jsonl at `path` without its rows of steps after `step` (and a line a
    kill cut short), atomically; the number of lines dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return 0
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # half-written when the process was killed
            continue
        if line.endswith("\n") and isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line)
    if len(kept) < len(lines):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        log.info("dropped %d rows of %s past step %d", len(lines) - len(kept), path, step)
    return len(lines) - len(kept)


def train_record(
    *,
    step: int,
    epoch: int,
    loss: float,
    nll: float,
    lr: float,
    tokens_per_s: float,
    elapsed_s: float,
    peak_rss_mib: float | None,
) -> dict[str, Any]:
    """A metrics.jsonl row of training (loss and NLL per target token over the window;
    the process's peak resident memory so far)."""
    return {
        "split": "train",
        "step": step,
        "epoch": epoch,
        "loss": loss,
        "nll": nll,
        "ppl": math.exp(min(nll, 50)),
        "lr": lr,
        "tokens_per_s": tokens_per_s,
        "elapsed_s": elapsed_s,
        "peak_rss_mib": peak_rss_mib,
    }


def log_train(record: dict[str, Any], total_steps: int | None, eta_s: float) -> None:
    """The progress line of a training record."""
    log.info(
        "step %d/%s | epoch %d | loss %.3f | ppl %.2f | lr %.2e | %s tok/s | peak RSS %s "
        "| %s elapsed | ETA %s",
        record["step"],
        total_steps or "?",
        record["epoch"] + 1,
        record["loss"],
        record["ppl"],
        record["lr"],
        f"{record['tokens_per_s']:,.0f}",
        "?" if record["peak_rss_mib"] is None else f"{record['peak_rss_mib']:,.0f} MiB",
        hms(record["elapsed_s"]),
        hms(eta_s),
    )


def log_validation(record: dict[str, Any]) -> None:
    """The line of a validation record."""
    log.info(
        "valid step %d | loss %.3f | ppl %.2f | BLEU %.2f | chrF %.2f (%s, %s sentences)",
        record["step"],
        record["loss"],
        record["ppl"],
        record["bleu"],
        record["chrf"],
        record["search"],
        record["sentences"],
    )


def non_finite_error(
    value: float, step: int, lr: float, run_dir: Path, last_step: int | None
) -> TrainingError:
    """The error of a loss that became `value` (finite: on another rank) at `step`; it says
    which checkpoint is left to go back to, if any."""
    what = f"became {value}" if not math.isfinite(value) else "became non-finite on another rank"
    kept = (
        f"{run_dir / 'checkpoint_last.pt'} holds step {last_step}"
        if last_step is not None
        else f"no checkpoint was saved yet in {run_dir}"
    )
    return TrainingError(
        f"the loss {what} at step {step} (learning rate {lr:.3g}); {kept}. Lower "
        f"train.lr_scale, raise train.warmup_steps, or set train.clip_norm"
    )
