"""`nmt-train`: train, validate, checkpoint, resume, and report BLEU on the test set.

A Hydra app: `nmt-train model=small encoding=relative encoding.k=4 data=multi30k`.
`torchrun --nproc_per_node=N -m nmt.train ...` trains with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nmt.checkpoint import (
    CheckpointError,
    architecture_differences,
    load_checkpoint,
    numbered_checkpoints,
    remove_partial_writes,
    save_checkpoint,
)
from nmt.config import (
    PATH_KEYS,
    RUNTIME_KEYS,
    flatten,
    register_configs,
    relative_terms,
    to_container,
    validate,
)
from nmt.data import PAD, prepare_data
from nmt.data.batching import collate, split_batches
from nmt.device import autocast, keep_freed_cpu_memory, resolve_device, resolve_precision
from nmt.evaluate import evaluate_split
from nmt.model import Transformer, build_model, parameter_counts

log = logging.getLogger("nmt.train")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable run directory); the message says why."""


# ----------------------------------------------------------------------------------------
# devices, precision, distributed


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        return autocast(self.device, self.precision)


def init_runtime(cfg: DictConfig) -> Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.train.device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=cfg.train.dist_timeout_minutes))
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cpu" and (kept := keep_freed_cpu_memory(cfg.train.malloc_keep_mib)):
        log.info("glibc keeps freed blocks up to %d MiB for reuse (train.malloc_keep_mib)", kept)
        if kept < cfg.train.malloc_keep_mib:
            log.warning(
                "this glibc caps train.malloc_keep_mib at %d MiB: larger tensors are still unmapped on free", kept
            )
    return Runtime(device, resolve_precision(cfg.train.precision, device), rank, world_size)


# ----------------------------------------------------------------------------------------
# schedule and loss


def inverse_sqrt_lr(step: int, d_model: int, warmup: int, scale: float) -> float:
    """Vaswani et al. 2017 eq. (3): scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)."""
    step = max(step, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, eps: float):
    """Summed (label-smoothed loss, NLL) over non-padding targets; logits (B, T, V)."""
    log_probs = F.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))
    target = target.reshape(-1)
    keep = target.ne(PAD)
    nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    smooth = -log_probs.mean(dim=-1)  # eps spread uniformly over the vocabulary
    loss = (1.0 - eps) * nll + eps * smooth
    # A multiply, not loss[keep]: boolean indexing has a data-dependent shape, a device sync.
    return (loss * keep).sum(), (nll * keep).sum()


# ----------------------------------------------------------------------------------------
# state


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # position in the epoch's batch list, for an exact resume
    tokens: int = 0  # target tokens trained on (all ranks)
    train_seconds: float = 0.0
    best_bleu: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointKeeper:
    """Writes checkpoint_<step>.pt, checkpoint_last.pt and checkpoint_best.pt; keeps the last N."""

    def __init__(self, run_dir: Path, keep_last: int) -> None:
        self.run_dir, self.keep_last = run_dir, keep_last

    def save(self, state: dict[str, Any], step: int, best: bool) -> None:
        last = self.run_dir / "checkpoint_last.pt"
        if self.keep_last > 0:
            numbered = self.run_dir / f"checkpoint_{step}.pt"
            save_checkpoint(numbered, state)
            _atomic_link(numbered, last)
            for old in numbered_checkpoints(self.run_dir)[: -self.keep_last]:
                old.unlink(missing_ok=True)
        else:
            save_checkpoint(last, state)
        if best:
            _atomic_link(last, self.run_dir / "checkpoint_best.pt")


def _atomic_link(src: Path, dst: Path) -> None:
    """dst becomes another name of src's complete file, atomically (hard link, else copy)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ----------------------------------------------------------------------------------------
# the run


class Trainer:
    """One training run in `run_dir`; `run()` returns what is written to results.json."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        validate(cfg)
        self.created = time.perf_counter()
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.rt = init_runtime(cfg)
        if self.rt.is_main:
            check_writable(self.run_dir)
            remove_partial_writes(self.run_dir)  # left by a run killed mid-save
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.data = prepare_data(cfg.data)
        self.vocab = self.data.vocab
        self.train_split = self.data.splits["train"]
        self.model: Transformer = build_model(cfg, self.vocab.size).to(self.rt.device)
        self.param_counts = parameter_counts(self.model)
        t = cfg.train
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=1.0, betas=tuple(t.adam_betas), eps=t.adam_eps,
            weight_decay=t.weight_decay,
        )
        d_model = cfg.model.d_model
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: inverse_sqrt_lr(s + 1, d_model, t.warmup_steps, t.lr_scale)
        )
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.rt.precision == "fp16")
        self.progress = Progress()
        self.keeper = CheckpointKeeper(self.run_dir, t.keep_last)
        self.resumed_from: str | None = None
        self._shares: dict[int, list[list[list[int]]]] = {}  # epoch -> every rank's batches
        self._maybe_resume()
        if self.rt.is_main and (self.run_dir / "results.json").exists():
            # Results of another budget, beam or attempt: kept aside, so a run cut from here
            # on is listed as unfinished, never as finished with the old numbers.
            os.replace(self.run_dir / "results.json", self.run_dir / "results.previous.json")
        if not self.resumed_from:  # dropout streams differ per rank; a resume restores them
            torch.manual_seed(cfg.seed + self.rt.rank)
        self.ddp_model: torch.nn.Module = self.model
        if self.rt.world_size > 1:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if t.compile:
            self.ddp_model = torch.compile(self.ddp_model)
        self.metrics_file = self.run_dir / "metrics.jsonl"
        self.tb = _tensorboard(self.run_dir) if (t.tensorboard and self.rt.is_main) else None

    # -- checkpoints ----------------------------------------------------------------------

    def _rank_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG state (dropout differs per rank), gathered on all ranks."""
        if self.rt.world_size == 1:
            return [rng_state()]
        states: list[Any] = [None] * self.rt.world_size
        dist.all_gather_object(states, rng_state())
        return states

    def _state(self, rank_rng: list[dict[str, Any]]) -> dict[str, Any]:
        p = self.progress
        return {
            "model": self.model.state_dict(),
            "config": to_container(self.cfg),
            "vocab_model": self.vocab.model_bytes,
            "vocab_fingerprint": self.vocab.fingerprint,
            "step": p.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rank_rng[0],
            "rng_per_rank": rank_rng,
            "progress": {k: v for k, v in vars(p).items() if k != "history"},
        }

    def _maybe_resume(self) -> None:
        last = self.run_dir / "checkpoint_last.pt"
        if not (self.cfg.train.resume and last.exists()):
            return
        state = load_checkpoint(last, map_location="cpu")
        diffs = architecture_differences(state["config"], to_container(self.cfg))
        if diffs:
            raise CheckpointError(
                f"cannot resume from {last}: it is a different model ({'; '.join(diffs)}); "
                f"use another run directory or train.resume=false"
            )
        if state.get("vocab_fingerprint") != self.vocab.fingerprint:
            theirs = state["config"]["data"]
            raise CheckpointError(
                f"cannot resume from {last}: its vocabulary differs from this run's "
                f"(checkpoint: data={theirs.get('name')} data.vocab_size={theirs.get('vocab_size')} "
                f"fingerprint {str(state.get('vocab_fingerprint'))[:12]}; this run: data={self.cfg.data.name} "
                f"data.vocab_size={self.cfg.data.vocab_size} fingerprint {self.vocab.fingerprint[:12]}); "
                f"use another run directory or the checkpoint's data settings"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        set_rng_state(per_rank[self.rt.rank] if len(per_rank) == self.rt.world_size else state["rng"])
        for key, value in state["progress"].items():
            setattr(self.progress, key, value)
        self.resumed_from = last.name
        log.info("resumed from %s at step %d", last, self.progress.step)

    # -- logging --------------------------------------------------------------------------

    def _record(self, values: dict[str, Any]) -> None:
        if not self.rt.is_main:
            return
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(values) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"{values.get('split', 'train')}/{key}", value, values["step"])

    # -- training -------------------------------------------------------------------------

    def _epoch_shares(self, epoch: int) -> list[list[list[int]]]:
        """Every rank's batches of an epoch. Each rank builds all of them, so the global token
        count of a step needs no collective; the last two epochs are kept (a step's batches
        may straddle an epoch boundary)."""
        if epoch not in self._shares:
            if len(self._shares) >= 2:
                del self._shares[min(self._shares)]
            self._shares[epoch] = [
                split_batches(self.train_split, self.cfg.train.max_tokens, seed=self.cfg.seed,
                              epoch=epoch, shuffle=True, rank=r, world_size=self.rt.world_size)
                for r in range(self.rt.world_size)
            ]
        return self._shares[epoch]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        return self._epoch_shares(epoch)[self.rt.rank]

    def _batches(self):
        """Yield (epoch, position after this batch, batch indices) from the saved position on."""
        p, t = self.progress, self.cfg.train
        epoch, start = p.epoch, p.batch_in_epoch
        while t.max_epochs <= 0 or epoch < t.max_epochs:
            batches = self._epoch_batches(epoch)
            for pos in range(start, len(batches)):
                yield epoch, pos + 1, batches[pos]
            epoch, start = epoch + 1, 0

    def _global_tokens(self, group: list[tuple[int, int, list[int]]]) -> int:
        """Target tokens (+ EOS each) of this step on all ranks, from every rank's batch list
        on the host: no all_reduce and no device sync."""
        tgt_lens = self.train_split.tgt_lens
        return sum(
            int(tgt_lens[share[pos - 1]].sum()) + len(share[pos - 1])
            for epoch, pos, _ in group
            for share in self._epoch_shares(epoch)
            if pos <= len(share)
        )

    def _total_steps(self) -> int | None:
        """The step budget: train.max_steps, or the epochs' worth of steps, whichever is less."""
        t, budgets = self.cfg.train, []
        if t.max_steps > 0:
            budgets.append(t.max_steps)
        if t.max_epochs > 0:  # the current epoch's batches are cached: no rebuild per log line
            budgets.append(t.max_epochs * math.ceil(len(self._epoch_batches(self.progress.epoch)) / t.update_freq))
        return min(budgets) if budgets else None

    def run(self) -> dict[str, Any]:
        cfg, t, p, rt = self.cfg, self.cfg.train, self.progress, self.rt
        if rt.is_main:
            log.info(
                "model=%s encoding=%s parameters=%s device=%s precision=%s world_size=%d run_dir=%s",
                cfg.model.name, cfg.encoding.name, f"{self.param_counts['total']:,}", rt.device,
                rt.precision, rt.world_size, self.run_dir,
            )
        self.ddp_model.train()
        window = _Window()
        batches = self._batches()
        start_step, start_time = p.step, time.perf_counter()
        # (step, loss, learning rate of that step): checked at log time, no sync per step
        pending: list[tuple[int, torch.Tensor, float]] = []
        exhausted = False
        validated_step = p.step  # every validation comes with a save
        while (t.max_steps <= 0 or p.step < t.max_steps) and not exhausted:
            group = []
            for _ in range(t.update_freq):
                item = next(batches, None)
                if item is None:
                    exhausted = True
                    break
                group.append(item)
            if not group:
                break
            global_tokens = self._global_tokens(group)
            step_loss = torch.zeros((), device=rt.device)
            step_nll = torch.zeros((), device=rt.device)
            for n, (_, _, indices) in enumerate(group):
                batch = collate(self.train_split, indices).to(rt.device)
                # DDP all-reduces gradients only on the step's last batch.
                accumulate = rt.world_size > 1 and n < len(group) - 1
                with self.ddp_model.no_sync() if accumulate else contextlib.nullcontext():
                    with rt.autocast():
                        logits = self.ddp_model(batch.src, batch.tgt_in)
                    loss, nll = label_smoothed_loss(logits, batch.tgt_out, t.label_smoothing)
                    # Summed over the step's tokens on all ranks and divided once: the gradient
                    # of the whole global batch. DDP averages over ranks: scale by world_size.
                    self.scaler.scale(loss * (rt.world_size / global_tokens)).backward()
                step_loss += loss.detach()
                step_nll += nll.detach()
            self.scaler.unscale_(self.optimizer)
            if t.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            step_lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            p.step += 1
            p.epoch, p.batch_in_epoch = group[-1][0], group[-1][1]
            p.tokens += global_tokens
            window.add(step_loss, step_nll, global_tokens)
            pending.append((p.step, step_loss, step_lr))

            last = t.max_steps > 0 and p.step >= t.max_steps
            if p.step % t.log_every == 0 or last:
                self._check_finite(pending)
                pending = []
                self._log_train(window, start_step, start_time)
            evaluate = p.step % t.eval_every == 0 or last
            if p.step % t.save_every == 0 or evaluate or last:
                self._check_finite(pending)
                pending = []
                paused = time.perf_counter()
                start_time, start_step = self._checkpoint(evaluate, start_time), p.step
                validated_step = p.step if evaluate else validated_step
                window.exclude(time.perf_counter() - paused)
        # The epoch budget ran out between log / eval / save steps: the last steps are
        # checked, logged, validated and saved like a max_steps ending.
        self._check_finite(pending)
        if window.loss is not None:
            self._log_train(window, start_step, start_time)
        if p.step > validated_step:
            start_time = self._checkpoint(True, start_time)
        p.train_seconds += time.perf_counter() - start_time
        if p.step == 0 and not self.resumed_from:  # nothing trained, nothing saved yet
            rank_rng = self._rank_rng_states()
            if rt.is_main:
                self.keeper.save(self._state(rank_rng), p.step, best=True)
        results = self._finish() if rt.is_main else {}
        if rt.world_size > 1:
            dist.barrier()
        return results

    def _checkpoint(self, evaluate: bool, start_time: float) -> float:
        """Validate (when due) and save; the time it takes is not training time. Returns the
        new start of the training clock."""
        p, rt = self.progress, self.rt
        p.train_seconds += time.perf_counter() - start_time
        bleu = self._validate() if evaluate and rt.is_main else None
        rank_rng = self._rank_rng_states()  # a collective: every rank takes part
        if rt.is_main:
            improved = bleu is not None and bleu > p.best_bleu
            if improved:
                p.best_bleu = bleu
            self.keeper.save(self._state(rank_rng), p.step, best=improved)
        self.ddp_model.train()
        return time.perf_counter()

    def _check_finite(self, pending: list[tuple[int, torch.Tensor, float]]) -> None:
        if not pending:
            return
        values = torch.stack([loss for _, loss, _ in pending])
        flags = (~torch.isfinite(values)).to(torch.int32)
        if self.rt.world_size > 1:  # every rank stops at the same step, none waits forever
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad = flags.cpu().nonzero()
        if len(bad):
            step, _, lr = pending[int(bad[0])]
            value = values[int(bad[0])].item()
            what = f"became {value}" if not math.isfinite(value) else "became non-finite on another rank"
            raise TrainingError(
                f"the loss {what} at step {step} (learning rate "
                f"{lr:.3g}); the last good checkpoint is kept in {self.run_dir}. Lower "
                f"train.lr_scale, raise train.warmup_steps, or set train.clip_norm"
            )

    def _log_train(self, window: _Window, start_step: int, start_time: float) -> None:
        p = self.progress
        loss_sum, nll_sum, tokens = window.flush()
        if self.rt.world_size > 1:
            both = torch.stack([loss_sum, nll_sum])
            dist.all_reduce(both)
            loss_sum, nll_sum = both[0], both[1]
        loss, nll = (loss_sum / tokens).item(), (nll_sum / tokens).item()
        elapsed = p.train_seconds + time.perf_counter() - start_time
        steps_done = p.step - start_step
        rate = steps_done / max(time.perf_counter() - start_time, 1e-9)
        total = self._total_steps()
        eta = (total - p.step) / rate if rate > 0 and total else float("nan")
        tok_s = tokens / max(window.seconds, 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        record = {
            "split": "train", "step": p.step, "epoch": p.epoch, "loss": loss, "nll": nll,
            "ppl": math.exp(min(nll, 50)), "lr": lr, "tokens_per_s": tok_s, "elapsed_s": elapsed,
        }
        self._record(record)
        if self.rt.is_main:
            log.info(
                "step %d/%s | epoch %d | loss %.3f | ppl %.2f | lr %.2e | %s tok/s | %s elapsed | ETA %s",
                p.step, total or "?", p.epoch + 1, loss, record["ppl"], lr, f"{tok_s:,.0f}",
                _hms(elapsed), _hms(eta),
            )

    @torch.no_grad()
    def _validation_loss(self) -> dict[str, float]:
        split, model = self.data.splits["valid"], self.model
        model.eval()
        loss_sum = nll_sum = 0.0
        tokens = 0
        batches = split_batches(split, self.cfg.train.max_tokens, seed=0, epoch=0, shuffle=False)
        for indices in batches:
            batch = collate(split, indices).to(self.rt.device)
            with self.rt.autocast():
                logits = model(batch.src, batch.tgt_in)
            loss, nll = label_smoothed_loss(logits, batch.tgt_out, self.cfg.train.label_smoothing)
            loss_sum, nll_sum, tokens = loss_sum + loss.item(), nll_sum + nll.item(), tokens + batch.tgt_tokens
        return {"loss": loss_sum / tokens, "nll": nll_sum / tokens, "ppl": math.exp(min(nll_sum / tokens, 50))}

    def _decode(self, split_name: str, beam: int, max_sentences: int, hyp_path: Path | None) -> dict:
        d = self.cfg.decode
        with self.rt.autocast():
            return evaluate_split(
                self.model, self.vocab, self.data.splits[split_name], beam=beam,
                alpha=d.alpha if beam > 1 else 0.0, max_len_a=d.max_len_a, max_len_b=d.max_len_b,
                max_tokens=d.max_tokens, device=self.rt.device, max_sentences=max_sentences,
                hyp_path=hyp_path, length_edges=list(d.length_buckets),
            )

    def _validate(self) -> float:
        t, p = self.cfg.train, self.progress
        started = time.perf_counter()
        losses = self._validation_loss()
        scores = self._decode("valid", t.eval_beam, t.eval_max_sentences, None)
        record = {
            "split": "valid", "step": p.step, **losses, "bleu": scores["bleu"], "chrf": scores["chrf"],
            "search": scores.get("search", "greedy" if t.eval_beam == 1 else f"beam{t.eval_beam}"),
            "sentences": scores.get("sentences"), "seconds": time.perf_counter() - started,
        }
        self._record(record)
        log.info(
            "valid step %d | loss %.3f | ppl %.2f | BLEU %.2f | chrF %.2f (%s, %s sentences)",
            p.step, losses["loss"], losses["ppl"], scores["bleu"], scores["chrf"],
            record["search"], record["sentences"],
        )
        return float(scores["bleu"])

    def _finish(self) -> dict[str, Any]:
        cfg, p, d = self.cfg, self.progress, self.cfg.decode
        averaged: list[str] = []
        if cfg.train.average_last > 1:
            from nmt.checkpoint import average_checkpoints

            paths = numbered_checkpoints(self.run_dir)[-cfg.train.average_last :]
            if len(paths) > 1:
                averaged_state = average_checkpoints(paths)
                self.model.load_state_dict(averaged_state["model"])
                save_checkpoint(self.run_dir / "checkpoint_averaged.pt", averaged_state)
                averaged = [x.name for x in paths]
        final = {}
        for split in ("valid", "test"):
            started = time.perf_counter()
            scores = self._decode(split, d.beam, 0, self.run_dir / f"{split}.hyp.txt")
            scores["seconds"] = time.perf_counter() - started
            final[split] = scores
            log.info(
                "%s | BLEU %.2f | chrF %.2f | beam %d alpha %.2f | %s",
                split, scores["bleu"], scores["chrf"], d.beam, d.alpha, scores.get("bleu_signature", ""),
            )
        keys, values = relative_terms(cfg.encoding)
        results = {
            "experiment": cfg.experiment,
            "model": cfg.model.name,
            "encoding": cfg.encoding.name,
            "k": cfg.encoding.k if cfg.encoding.name in ("relative", "combined") else None,
            "keys": keys if cfg.encoding.name in ("relative", "combined") else None,
            "values": values if cfg.encoding.name in ("relative", "combined") else None,
            "share_heads": cfg.encoding.share_heads,
            "data": cfg.data.name,
            "seed": cfg.seed,
            "parameters": self.param_counts["total"],
            "steps": p.step,
            "epochs": p.epoch + p.batch_in_epoch / max(len(self._epoch_batches(p.epoch)), 1),
            "train_seconds": p.train_seconds,
            "train_tokens": p.tokens,
            "train_tokens_per_s": p.tokens / max(p.train_seconds, 1e-9),
            # this process, start to results: data, validation, checkpoints and the final decode
            "wall_seconds": time.perf_counter() - self.created,
            "device": str(self.rt.device),
            "precision": self.rt.precision,
            "world_size": self.rt.world_size,
            "decode": {"beam": d.beam, "alpha": d.alpha, "max_len_a": d.max_len_a, "max_len_b": d.max_len_b},
            "validation_during_training": {"beam": cfg.train.eval_beam, "max_sentences": cfg.train.eval_max_sentences},
            "best_valid_bleu_during_training": p.best_bleu,
            "averaged_checkpoints": averaged,
            "valid": final["valid"],
            "test": final["test"],
            # file names inside the run directory: results.json carries no machine's paths
            "hypotheses": {split: f"{split}.hyp.txt" for split in final},
            "resumed_from": self.resumed_from,
            "status": "finished",
            "settings": run_settings(cfg),
        }
        tmp = self.run_dir / ".results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, self.run_dir / "results.json")
        log.info("results written to %s", self.run_dir / "results.json")
        return results


class _Window:
    """Loss sums and token counts since the last log line (device tensors: no sync per step)."""

    def __init__(self) -> None:
        self.loss = self.nll = None
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

    def flush(self):
        out = (self.loss, self.nll, self.tokens)
        self.seconds = time.perf_counter() - self.started
        self.loss = self.nll = None
        self.tokens = 0
        self.started = time.perf_counter()
        return out


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the `tb` extra is not installed
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


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


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """Every config value that can change a run's results, as dotted keys (JSON types).

    The corpus paths enter as digests: results.json names no machine's paths, and data
    moved to another directory only costs a decode again, never a wrong skip.
    """
    settings = {}
    for key, value in flatten(to_container(cfg)).items():
        if key in RUNTIME_KEYS or key == "data.cache_dir":
            continue
        if key in PATH_KEYS:
            value = "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()[:16]
        settings[key] = value
    return json.loads(json.dumps(settings))  # tuples as lists, as read back from results.json


def finished_results(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json if it finished with exactly these settings, else None.

    Relaunching a sweep resumes its unfinished jobs; the finished ones would otherwise
    reload their last checkpoint and decode the validation and test sets again.
    """
    path = run_dir / "results.json"
    if not (cfg.train.resume and path.is_file()):
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if results.get("status") != "finished" or results.get("settings") != run_settings(cfg):
        return None
    return results


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train (or resume) a run in `run_dir` and return its results.

    A run that already finished with the same settings is not touched: its results are
    returned as they are. A run that raises leaves `failed.json` (the error) so
    `nmt-report` lists it as failed.
    """
    run_dir = Path(run_dir)
    try:
        done = finished_results(cfg, run_dir)
        if done is not None:
            log.info(
                "%s already finished with these settings (test BLEU %.2f): nothing to do. To train "
                "it again, use another run directory or train.resume=false",
                run_dir, done["test"]["bleu"],
            )
            return done
        results = Trainer(cfg, run_dir).run()
    except Exception as err:
        if run_dir.is_dir() and int(os.environ.get("RANK", "0")) == 0:
            failure = {"status": "failed", "error": f"{type(err).__name__}: {err}", "time": time.time()}
            (run_dir / "failed.json").write_text(json.dumps(failure, indent=2))
        raise
    (run_dir / "failed.json").unlink(missing_ok=True)  # an earlier attempt failed, this one did not
    return results


register_configs()


@hydra.main(version_base="1.3", config_path="pkg://nmt.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    results = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    # Returned for Hydra sweepers (e.g. Optuna): the validation BLEU.
    return float(results.get("valid", {}).get("bleu", float("nan"))) if results else float("nan")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
