"""What a training run scores: validation during training, and the final decode of the
validation and test sets (after averaging the last checkpoints when asked)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from nmt.checkpoint import average_checkpoints, numbered_checkpoints, save_checkpoint
from nmt.evaluation import evaluate_split
from nmt.objective import split_loss
from nmt.train_log import log_validation

# Training's messages keep the command's logger name, whichever module emits them.
log = logging.getLogger("nmt.train")
FINAL_SPLITS = ("valid", "test")


def decode_split(
    model: Any,
    data: Any,
    split: str,
    settings: Any,
    runtime: Any,
    *,
    max_sentences: int = 0,
    hyp_path: Path | None = None,
) -> dict[str, Any]:
    """`evaluate_split` of one prepared split under the run's device and precision."""
    with runtime.autocast():
        return evaluate_split(
            model,
            data.vocab,
            data.splits[split],
            settings,
            device=runtime.device,
            max_sentences=max_sentences,
            hyp_path=hyp_path,
            progress=False,
        )


def validation_record(
    model: Any, data: Any, cfg: Any, settings: Any, runtime: Any, step: int
) -> dict[str, Any]:
    """Validation loss and BLEU / chrF of a (possibly greedy, subsampled) decode, logged."""
    t = cfg.train
    started = time.perf_counter()
    losses = split_loss(
        model,
        data.splits["valid"],
        max_tokens=t.max_tokens,
        label_smoothing=t.label_smoothing,
        chunk_tokens=t.loss_chunk_tokens,
        runtime=runtime,
    )
    scores = decode_split(
        model, data, "valid", settings, runtime, max_sentences=t.eval_max_sentences
    )
    record = {
        "split": "valid",
        "step": step,
        **losses,
        "bleu": scores["bleu"],
        "chrf": scores["chrf"],
        "search": scores.get("search", "greedy" if t.eval_beam == 1 else f"beam{t.eval_beam}"),
        "sentences": scores.get("sentences"),
        "seconds": time.perf_counter() - started,
    }
    log_validation(record)
    return record


def average_last(model: Any, run_dir: Path, count: int) -> list[str]:
    """Load the mean of the last `count` numbered checkpoints into `model` (saved as
    checkpoint_averaged.pt); the names averaged, none when fewer than two exist."""
    paths = numbered_checkpoints(run_dir)[-count:] if count > 1 else []
    if len(paths) < 2:
        return []
    averaged = average_checkpoints(paths)
    model.load_state_dict(averaged["model"])
    save_checkpoint(run_dir / "checkpoint_averaged.pt", averaged)
    return [path.name for path in paths]


def final_scores(
    model: Any, data: Any, settings: Any, runtime: Any, run_dir: Path
) -> dict[str, dict[str, Any]]:
    """Decode the validation and test sets with the final settings; hypotheses to files."""
    scores = {}
    for split in FINAL_SPLITS:
        started = time.perf_counter()
        scores[split] = decode_split(
            model, data, split, settings, runtime, hyp_path=run_dir / f"{split}.hyp.txt"
        )
        scores[split]["seconds"] = time.perf_counter() - started
        log.info(
            "%s | BLEU %.2f | chrF %.2f | beam %d alpha %.2f | %s",
            split,
            scores[split]["bleu"],
            scores[split]["chrf"],
            settings.beam,
            settings.alpha,
            scores[split].get("bleu_signature", ""),
        )
    return scores
