"""A training run's saved state: what a checkpoint holds to resume exactly, and how it is kept.

A resumed run continues the same run: the same data order (epoch and position in it), the
same dropout draws (every rank's RNG state) and the same optimizer, schedule and loss-scaler
state, so its losses match a run that was never interrupted.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from nmt.checkpoint import (
    architecture_differences,
    load_checkpoint,
    numbered_checkpoints,
    save_checkpoint,
)
from nmt.config import to_container
from nmt.errors import CheckpointError, ConfigError, TrainingError
from nmt.objective import load_optimizer_state
from nmt.runtime import resolve_precision
from nmt.train_batches import TrainBatches

# Training's messages keep the command's logger name, whichever module emits them.
log = logging.getLogger("nmt.train")


@dataclass
class Progress:
    """How far a run has come; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # position in the epoch's batch list, for an exact resume
    tokens: int = 0  # target tokens trained on (all ranks)
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # every launch's, start to the last save
    best_bleu: float = -1.0


def rng_state() -> dict[str, Any]:
    """This process's random generators: torch (and CUDA), Python's and NumPy's, as tensors,
    numbers and tuples only, so a checkpoint loads with `torch.load(weights_only=True)`."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        keys = numpy["keys"].numpy().astype(np.uint32)
        numpy = (numpy["name"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    np.random.set_state(numpy)  # older checkpoints hold NumPy's own tuple
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every rank's RNG state (dropout differs per rank), gathered on all ranks: with more
    than one rank a collective, so every rank must call it."""
    if world_size == 1:
        return [rng_state()]
    states: list[Any] = [None] * world_size
    dist.all_gather_object(states, rng_state())
    return states


@dataclass
class RunParts:
    """What a training checkpoint saves and a resume restores."""

    cfg: Any
    vocab: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    progress: Progress
    precision: str  # what train.precision resolved to on this machine
    batches: TrainBatches


def training_state(parts: RunParts, rank_rng: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint of a training run: the weights, what decoding needs (config and
    vocabulary), and what an exact resume needs."""
    return {
        "model": parts.model.state_dict(),
        "config": to_container(parts.cfg),
        "vocab_model": parts.vocab.model_bytes,
        "vocab_fingerprint": parts.vocab.fingerprint,
        "step": parts.progress.step,
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "precision": parts.precision,
        "rng": rank_rng[0],
        "rng_per_rank": rank_rng,
        "progress": asdict(parts.progress),
        "batch_order": _batch_order(parts.batches, parts.progress.epoch),
    }


def _batch_order(batches: TrainBatches, epoch: int) -> dict[str, Any]:
    """What identifies the batch list a run is walking: the position in it means nothing
    under another list."""
    return {
        "epoch": epoch,
        "fingerprint": batches.fingerprint(epoch),
        "batches": len(batches.of_epoch(epoch)),
    }


def _batch_settings(config: Any, world_size: int) -> dict[str, Any]:
    """The settings that shape an epoch's batch list, by the names a user sets them with."""
    train = config["train"]
    return {
        "train.max_tokens": train["max_tokens"],
        "train.length_multiple": train.get("length_multiple", 1),  # 1 before the key existed
        "seed": config["seed"],
        "processes": world_size,
    }


def _continue_epoch_position(
    state: dict[str, Any], path: Path, parts: RunParts, announce: bool
) -> None:
    """Keep a resume's position in its epoch meaningful when the epoch's batch list changed
    (another token budget, length multiple, seed, number of processes or training split):
    go on at the same fraction of the epoch, and say so, since the rest of that epoch is
    then not exactly the data an uninterrupted run would see (`announce`: on one rank)."""
    batches, progress = parts.batches, parts.progress
    epoch = progress.epoch
    # Checkpoints of before per-rank RNG states do not say how many processes saved them:
    # as before the digest, an unchanged process count is assumed.
    saved_ranks = len(state["rng_per_rank"]) if "rng_per_rank" in state else batches.world_size
    before = _batch_settings(state["config"], saved_ranks)
    saved = state.get("batch_order")
    if saved is None:  # a checkpoint of before the key: rebuild its list from its settings
        old = TrainBatches(
            batches.split,
            before["train.max_tokens"],
            seed=before["seed"],
            rank=0,
            world_size=saved_ranks,
            length_multiple=before["train.length_multiple"],
        )
        saved = _batch_order(old, epoch)
    if saved["fingerprint"] == batches.fingerprint(epoch):
        return
    done = progress.batch_in_epoch
    total = len(batches.of_epoch(epoch))
    if done in (0, saved["batches"]):  # at an epoch's start or end: nothing to realign
        progress.batch_in_epoch = 0 if done == 0 else total
        return
    now = _batch_settings(to_container(parts.cfg), batches.world_size)
    changed = [f"{key} {before[key]} -> {now[key]}" for key in now if before[key] != now[key]]
    progress.batch_in_epoch = min(total, round(done * total / max(saved["batches"], 1)))
    if not announce:
        return
    log.warning(
        "%s stopped at batch %d of %d of epoch %d, and this run batches that epoch "
        "differently (%s): it goes on at batch %d of %d, the same fraction of the epoch, so "
        "the rest of epoch %d is not exactly the data an uninterrupted run sees; later "
        "epochs follow the new settings. Resume with the old settings for an exact resume.",
        path,
        done,
        saved["batches"],
        epoch,
        "; ".join(changed) or "other training pairs: data settings, corpus or batching code",
        progress.batch_in_epoch,
        total,
        epoch,
    )


def _trained_precision(state: dict[str, Any], model: torch.nn.Module) -> str:
    """The precision a checkpoint trained in. Older checkpoints hold only the setting, and
    `auto` then meant fp32 on the CPU and what it means now on GPUs."""
    if "precision" in state:
        return state["precision"]
    setting = state["config"].get("train", {}).get("precision", "auto")
    if setting != "auto":
        return setting
    device = next(model.parameters()).device
    return "fp32" if device.type == "cpu" else resolve_precision("auto", device)


def resume(path: Path, parts: RunParts, rank: int, world_size: int) -> None:
    """Load the training state at `path` into the run's parts; `CheckpointError` if it is
    another model or vocabulary than `cfg` trains."""
    cfg, vocab, progress = parts.cfg, parts.vocab, parts.progress
    state = load_checkpoint(path, map_location="cpu")
    diffs = architecture_differences(state["config"], to_container(cfg))
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: it is a different model ({'; '.join(diffs)}); "
            f"use another run directory or train.resume=false"
        )
    if state.get("vocab_fingerprint") != vocab.fingerprint:
        theirs = state["config"]["data"]
        raise CheckpointError(
            f"cannot resume from {path}: its vocabulary differs from this run's "
            f"(checkpoint: data={theirs.get('name')} data.vocab_size={theirs.get('vocab_size')} "
            f"fingerprint {str(state.get('vocab_fingerprint'))[:12]}; this run: "
            f"data={cfg.data.name} data.vocab_size={cfg.data.vocab_size} fingerprint "
            f"{vocab.fingerprint[:12]}); use another run directory or the checkpoint's data "
            f"settings"
        )
    trained_in = _trained_precision(state, parts.model)
    if trained_in != parts.precision:
        raise CheckpointError(
            f"cannot resume from {path}: it trained in {trained_in} and this run would go on "
            f"in {parts.precision} (train.precision={cfg.train.precision}); pass "
            f"train.precision={trained_in} to continue the run as it started"
        )
    parts.model.load_state_dict(state["model"])
    load_optimizer_state(parts.optimizer, state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    per_rank = state.get("rng_per_rank") or [state["rng"]]
    # Another world size cannot continue each rank's stream: every rank takes rank 0's.
    set_rng_state(per_rank[rank] if len(per_rank) == world_size else state["rng"])
    known = {f.name for f in fields(Progress)}
    for key, value in state["progress"].items():
        if key in known:
            setattr(progress, key, value)
    _continue_epoch_position(state, path, parts, announce=rank == 0)
    if "wall_seconds" not in state["progress"]:
        # A checkpoint of before wall_seconds was saved: the earlier launches' training time
        # is the best lower bound of their wall time.
        progress.wall_seconds = progress.train_seconds
    log.info("resumed from %s at step %d", path, progress.step)


class CheckpointKeeper:
    """Writes checkpoint_<step>.pt, checkpoint_last.pt and checkpoint_best.pt; keeps the last N."""

    def __init__(self, run_dir: Path, keep_last: int) -> None:
        self.run_dir, self.keep_last = run_dir, keep_last
        self.last_step: int | None = None  # the step checkpoint_last.pt holds, once known

    def save(self, state: dict[str, Any], step: int, best: bool) -> None:
        last = self.run_dir / "checkpoint_last.pt"
        self.last_step = step
        if self.keep_last > 0:
            numbered = self.run_dir / f"checkpoint_{step}.pt"
            save_checkpoint(numbered, state)
            _atomic_link(numbered, last)
            for old in numbered_checkpoints(self.run_dir)[: -self.keep_last]:
                old.unlink(missing_ok=True)
        else:
            save_checkpoint(last, state)
        if best:
            self.mark_best()

    def mark_best(self) -> None:
        """checkpoint_best.pt becomes the checkpoint saved last."""
        _atomic_link(self.run_dir / "checkpoint_last.pt", self.run_dir / "checkpoint_best.pt")


def _atomic_link(src: Path, dst: Path) -> None:
    """dst becomes another name of src's complete file, atomically (hard link, else copy)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def check_writable(run_dir: Path) -> None:
    """Fail before any work if the run directory cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise TrainingError(
            f"cannot write to the run directory {run_dir} ({err.strerror}); choose another with "
            f"hydra.run.dir=DIR (or NMT_RUNS_DIR=DIR)"
        ) from err


def refuse_mixed_run(run_dir: Path, resume: bool) -> None:
    """With train.resume=false, fail before any work if `run_dir` holds another run's
    checkpoints, metrics or results: training there would mix the two runs (the old numbered
    checkpoints outrank the new ones in pruning, checkpoint_best.pt and metrics.jsonl stay
    the old run's)."""
    if resume or not run_dir.is_dir():
        return
    found = sorted(
        path.name
        for path in run_dir.iterdir()
        if path.name in ("metrics.jsonl", "results.json")
        or (path.name.startswith("checkpoint") and path.suffix == ".pt")
    )
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ConfigError(
            f"train.resume=false, but the run directory {run_dir} holds another run ({shown}); "
            f"choose a new directory with hydra.run.dir=DIR, or remove {run_dir} to train "
            f"there from scratch, or continue that run with train.resume=true"
        )
