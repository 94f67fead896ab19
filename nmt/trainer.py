"""One training run: the loop, its schedule of logging, validation and saving, and the end of
the run (checkpoint averaging, the final decode, results.json), in a single process or as
one rank of a torchrun group.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from nmt.checkpoint import remove_partial_writes
from nmt.config import decode_settings
from nmt.config_checks import validate
from nmt.data import prepare_data
from nmt.data.batching import collate
from nmt.model import Transformer, build_model, parameter_counts
from nmt.objective import batch_loss, build_optimization
from nmt.results import results_record, write_results
from nmt.run_scoring import average_last, final_scores, validation_record
from nmt.runtime import init_runtime, peak_resident_mib
from nmt.train_batches import Batch, TrainBatches
from nmt.train_log import MetricsLog, Window, log_train, non_finite_error, train_record
from nmt.training_state import (
    CheckpointKeeper,
    Progress,
    RunParts,
    check_writable,
    rank_rng_states,
    refuse_mixed_run,
    resume,
    training_state,
)

# Training's messages keep the command's logger name, whichever module emits them.
log = logging.getLogger("nmt.train")

StepBatches = list[Batch]  # the batches of one optimizer step on this rank


class Trainer:
    """One training run in `run_dir`; `run()` returns what is written to results.json."""

    def __init__(self, cfg: Any, run_dir: str | Path) -> None:
        validate(cfg)
        self.created = time.perf_counter()
        self.cfg, self.run_dir = cfg, Path(run_dir)
        refuse_mixed_run(self.run_dir, cfg.train.resume)
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
        self.optimizer, self.scheduler, self.scaler = build_optimization(
            self.model, cfg, self.rt.device, self.rt.precision
        )
        self.progress = Progress()
        self.keeper = CheckpointKeeper(self.run_dir, t.keep_last)
        self.resumed_from: str | None = None
        self.batches = TrainBatches(
            self.train_split,
            t.max_tokens,
            seed=cfg.seed,
            rank=self.rt.rank,
            world_size=self.rt.world_size,
            length_multiple=t.length_multiple,
        )
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
        at, main = self.progress.step, self.rt.is_main
        self.metrics = MetricsLog(self.run_dir, enabled=main, tensorboard=t.tensorboard, step=at)
        self._wall_before = self.progress.wall_seconds  # the earlier launches'
        # Beam 1 is greedy search, which takes no length penalty (alpha 0).
        d = cfg.decode
        self.validation_decode = decode_settings(
            d, beam=t.eval_beam, alpha=d.alpha if t.eval_beam > 1 else 0.0, nbest=1
        )
        self.final_decode = decode_settings(d, alpha=d.alpha if d.beam > 1 else 0.0, nbest=1)

    def run(self) -> dict[str, Any]:
        """Train to the step or epoch budget, validating and saving on schedule; then decode
        the validation and test sets and write results.json (on rank 0; others return {})."""
        self._announce()
        self._start_clock()
        for batches in self._step_batches():
            self._step(batches)
            last = self._budget_spent()
            if self._time_to_log(last):
                self._log_train()
            validating = self._time_to_validate(last)
            if validating or self._time_to_save(last):
                self._save(validating)
        self._stop_clock()
        results = self._finish() if self.rt.is_main else {}
        if self.rt.world_size > 1:
            dist.barrier()
        return results

    # -- the step -------------------------------------------------------------------------

    def _step(self, batches: StepBatches) -> None:
        """One optimizer update on this rank's share of the step's global batch."""
        t, p = self.cfg.train, self.progress
        global_tokens = self.batches.global_tokens(batches)
        step_loss, step_nll = self._accumulate(batches, global_tokens)
        self.scaler.unscale_(self.optimizer)
        if t.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        step_lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        p.step += 1
        p.epoch, p.batch_in_epoch = batches[-1][0], batches[-1][1]
        p.tokens += global_tokens
        self._window.add(step_loss, step_nll, global_tokens)
        self._pending.append((p.step, step_loss, step_lr))

    def _accumulate(
        self, batches: StepBatches, global_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward over the step's micro-batches, gradients summed; returns the
        step's (loss, NLL) sums on this rank, still on the device."""
        rt, t = self.rt, self.cfg.train
        step_loss = torch.zeros((), device=rt.device)
        step_nll = torch.zeros((), device=rt.device)
        for n, (_, _, indices) in enumerate(batches):
            batch = collate(self.train_split, indices, length_multiple=t.length_multiple)
            batch = batch.to(rt.device)
            # DDP all-reduces gradients only on the step's last batch.
            accumulate = rt.world_size > 1 and n < len(batches) - 1
            with self.ddp_model.no_sync() if accumulate else contextlib.nullcontext():
                with rt.autocast():
                    loss, nll = batch_loss(
                        self.ddp_model,
                        self.model.output_weight,
                        batch,
                        t.label_smoothing,
                        t.loss_chunk_tokens,
                    )
                # Summed over the step's tokens on all ranks and divided once: the gradient
                # of the whole global batch. DDP averages over ranks: scale by world_size.
                self.scaler.scale(loss * (rt.world_size / global_tokens)).backward()
            step_loss += loss.detach()
            step_nll += nll.detach()
        return step_loss, step_nll

    # -- the schedule ---------------------------------------------------------------------

    def _budget_spent(self) -> bool:
        t = self.cfg.train
        return t.max_steps > 0 and self.progress.step >= t.max_steps

    def _time_to_log(self, last: bool) -> bool:
        return self.progress.step % self.cfg.train.log_every == 0 or last

    def _time_to_validate(self, last: bool) -> bool:
        return self.progress.step % self.cfg.train.eval_every == 0 or last

    def _time_to_save(self, last: bool) -> bool:
        return self.progress.step % self.cfg.train.save_every == 0 or last

    def _start_clock(self) -> None:
        """Training time counts from here; validation and saving are left out of it."""
        self.ddp_model.train()
        self._window = Window()
        self._started, self._started_step = time.perf_counter(), self.progress.step
        # (step, loss, learning rate of that step): checked at log time, no sync per step
        self._pending: list[tuple[int, torch.Tensor, float]] = []
        self._validated_step = self.progress.step  # every validation comes with a save

    def _stop_clock(self) -> None:
        """End training: the steps since the last log or save (an epoch budget can run out
        between them) are checked, logged, validated and saved like a max_steps ending."""
        self._check_finite()
        if self._window.loss is not None:
            self._log_train()
        if self.progress.step > self._validated_step:
            self._checkpoint(validate=True)
        self.progress.train_seconds += time.perf_counter() - self._started
        if self.progress.step == 0 and not self.resumed_from:  # nothing trained, nothing saved
            self._save_state(best=True)

    def _step_batches(self) -> Iterator[StepBatches]:
        """The batches of each step (update_freq of them, fewer where the data ends) until
        the step budget is spent."""
        t, p = self.cfg.train, self.progress
        batches = self.batches.from_position(p.epoch, p.batch_in_epoch, t.max_epochs)
        while t.max_steps <= 0 or self.progress.step < t.max_steps:
            group: StepBatches = []
            for item in batches:
                group.append(item)
                if len(group) == t.update_freq:
                    break
            if group:
                yield group
            if len(group) < t.update_freq:  # the epoch budget is spent
                return

    def _total_steps(self) -> int | None:
        """The step budget: train.max_steps, or the epochs' worth of steps, whichever is less."""
        t, budgets = self.cfg.train, []
        if t.max_steps > 0:
            budgets.append(t.max_steps)
        if t.max_epochs > 0:  # the current epoch's batches are cached: no rebuild per log line
            epoch_steps = self.batches.steps_per_epoch(self.progress.epoch, t.update_freq)
            budgets.append(t.max_epochs * epoch_steps)
        return min(budgets) if budgets else None

    # -- logging --------------------------------------------------------------------------

    def _announce(self) -> None:
        cfg, rt = self.cfg, self.rt
        if rt.is_main:
            log.info(
                "model=%s encoding=%s parameters=%s device=%s precision=%s world_size=%d "
                "run_dir=%s",
                cfg.model.name,
                cfg.encoding.name,
                f"{self.param_counts['total']:,}",
                rt.device,
                rt.precision,
                rt.world_size,
                self.run_dir,
            )

    def _check_finite(self) -> None:
        """Raise `TrainingError` at the first step since the last check whose loss is not
        finite on any rank."""
        pending, self._pending = self._pending, []
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
            raise non_finite_error(value, step, lr, self.run_dir, self.keeper.last_step)

    def _log_train(self) -> None:
        """Check and log the steps since the last log line (all ranks' mean loss)."""
        self._check_finite()
        p = self.progress
        loss_sum, nll_sum, tokens = self._window.flush()
        if self.rt.world_size > 1:
            both = torch.stack([loss_sum, nll_sum])
            dist.all_reduce(both)
            loss_sum, nll_sum = both[0], both[1]
        elapsed = p.train_seconds + time.perf_counter() - self._started
        steps_done = p.step - self._started_step
        rate = steps_done / max(time.perf_counter() - self._started, 1e-9)
        total = self._total_steps()
        record = train_record(
            step=p.step,
            epoch=p.epoch,
            loss=(loss_sum / tokens).item(),
            nll=(nll_sum / tokens).item(),
            lr=self.optimizer.param_groups[0]["lr"],
            tokens_per_s=tokens / max(self._window.seconds, 1e-9),
            elapsed_s=elapsed,
            peak_rss_mib=peak_resident_mib(),
        )
        self.metrics.record(record)
        if self.rt.is_main:
            log_train(record, total, (total - p.step) / rate if rate > 0 and total else math.nan)

    # -- validation and checkpoints -------------------------------------------------------

    def _save(self, validate: bool) -> None:
        """Check the steps since the last check, validate (when due) and save, outside the
        training clock and the throughput window."""
        self._check_finite()
        paused = time.perf_counter()
        self._checkpoint(validate)
        self._started_step = self.progress.step
        self._window.exclude(time.perf_counter() - paused)

    def _checkpoint(self, validate: bool) -> None:
        """Save, then validate (when due): a failure in validation loses no training. The
        time it takes is not training time."""
        p = self.progress
        p.train_seconds += time.perf_counter() - self._started
        state = self._save_state(best=False)
        bleu = self._validate() if validate and self.rt.is_main else None
        if state is not None and bleu is not None and bleu > p.best_bleu:
            # Saved again with the new best BLEU (the same state otherwise), so a resumed run
            # compares later validations with it; then it becomes checkpoint_best.pt.
            p.best_bleu = bleu
            state["progress"] = asdict(p)
            self.keeper.save(state, p.step, best=True)
        if validate:
            self._validated_step = p.step
        self.ddp_model.train()
        self._started = time.perf_counter()

    def _save_state(self, best: bool) -> dict[str, Any] | None:
        """Save the training state (on rank 0, which gets it back; other ranks get None)."""
        rank_rng = rank_rng_states(self.rt.world_size)  # a collective: every rank takes part
        if self.rt.is_main:
            self.progress.wall_seconds = self._wall_before + time.perf_counter() - self.created
            state = training_state(self._parts(), rank_rng)
            self.keeper.save(state, self.progress.step, best=best)
            return state
        return None

    def _parts(self) -> RunParts:
        return RunParts(
            self.cfg,
            self.vocab,
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.progress,
            self.rt.precision,
            self.batches,
        )

    def _maybe_resume(self) -> None:
        last = self.run_dir / "checkpoint_last.pt"
        if not (self.cfg.train.resume and last.exists()):
            return
        resume(last, self._parts(), self.rt.rank, self.rt.world_size)
        self.resumed_from = last.name
        self.keeper.last_step = self.progress.step

    def _validate(self) -> float:
        record = validation_record(
            self.model, self.data, self.cfg, self.validation_decode, self.rt, self.progress.step
        )
        self.metrics.record(record)
        return float(record["bleu"])

    # -- the end of the run ---------------------------------------------------------------

    def _finish(self) -> dict[str, Any]:
        """Average the last checkpoints (train.average_last), decode the validation and test
        sets with the model that results, and write results.json."""
        cfg, p = self.cfg, self.progress
        averaged = average_last(self.model, self.run_dir, cfg.train.average_last)
        scores = final_scores(self.model, self.data, self.final_decode, self.rt, self.run_dir)
        results = results_record(
            cfg,
            steps=p.step,
            epochs=p.epoch + p.batch_in_epoch / max(len(self.batches.of_epoch(p.epoch)), 1),
            train_seconds=p.train_seconds,
            train_tokens=p.tokens,
            best_valid_bleu=p.best_bleu,
            parameters=self.param_counts["total"],
            wall_seconds=self._wall_before + time.perf_counter() - self.created,
            peak_rss_mib=peak_resident_mib(),
            device=str(self.rt.device),
            precision=self.rt.precision,
            world_size=self.rt.world_size,
            averaged=averaged,
            scores=scores,
            resumed_from=self.resumed_from,
        )
        log.info("results written to %s", write_results(self.run_dir, results))
        return results
