"""The results record: `results.json`, written when a run finishes and read by `nmt-report`.

It holds the run's scores, cost and settings, and the key lists that decide which config
values are settings: a finished run relaunched with the same settings is not trained again,
sweep job directories are named by the settings that differ, and the report makes rows of
them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nmt.config import Config, flatten, to_container
from nmt.encodings import SIDE_KEYS, used_options

# Keys of how a run executes, not of what it computes: a finished run relaunched with other
# values is still finished (`finished_results`), nmt-report never makes them a row, and
# sweep job names leave them out. train.device, with train.precision=auto, also picks the
# precision; results.json records it.
RUNTIME_KEYS = (
    "train.device",
    "train.threads",
    "train.malloc_keep_mib",
    "train.loss_chunk_tokens",
    "train.kernel_cache_entries",
    "train.tensorboard",
    "train.resume",
    "train.log_every",
    "train.dist_timeout_minutes",
)
# Keys holding a machine's paths: never written to results.json. The data cache holds what
# the other data keys determine; data.root and data.hub_name pick the corpus.
PATH_KEYS = ("data.cache_dir", "data.root", "data.hub_name")
# Overrides that do not name a sweep job's directory (conf/config.yaml): the runtime keys
# (else a relaunch with other values would train again in a new directory), the path keys (a
# '/' in a value would nest the job directory; .hydra/overrides.yaml keeps them) and
# +experiment=X (its name is in results.json).
SWEEP_NAME_EXCLUDED_KEYS = ("experiment", *RUNTIME_KEYS, *PATH_KEYS)
# conf/config.yaml reads SWEEP_NAME_EXCLUDED_KEYS through this resolver.
EXCLUDED_KEYS_RESOLVER = "nmt_excluded_keys"

# What nmt-report reads from a results record: measure -> its path in results.json.
MEASURES: dict[str, tuple[str, ...]] = {
    "valid_bleu": ("valid", "bleu"),
    "test_bleu": ("test", "bleu"),
    "test_chrf": ("test", "chrf"),
    "steps": ("steps",),
    "tokens_per_s": ("train_tokens_per_s",),
    "parameters": ("parameters",),
    "train_seconds": ("train_seconds",),
    "peak_rss_mib": ("peak_rss_mib",),
}


def register_resolvers() -> None:
    """Make `${nmt_excluded_keys:}` available to the configs (idempotent)."""
    if not OmegaConf.has_resolver(EXCLUDED_KEYS_RESOLVER):
        OmegaConf.register_new_resolver(
            EXCLUDED_KEYS_RESOLVER, lambda: list(SWEEP_NAME_EXCLUDED_KEYS)
        )


def measures(results: dict[str, Any]) -> dict[str, Any]:
    """Every measure of `MEASURES` in a results record; None where it is missing."""
    out = {}
    for name, path in MEASURES.items():
        value: Any = results
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        out[name] = value
    return out


def run_settings(cfg: Any) -> dict[str, Any]:
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


def finished_results(cfg: Any, run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json if it finished with exactly these settings, else None.

    Relaunching a sweep resumes its unfinished jobs; the finished ones would otherwise
    reload their last checkpoint and decode the validation and test sets again.
    """
    path = Path(run_dir) / "results.json"
    if not (cfg.train.resume and path.is_file()):
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if results.get("status") != "finished" or not isinstance(results.get("settings"), dict):
        return None
    current, stored = run_settings(cfg), results["settings"]
    # A key the schema gained after the run finished (e.g. train.length_multiple) is absent
    # from its record; at its default it is the computation the run made.
    defaults = json.loads(json.dumps(flatten(to_container(Config()))))  # lists as read back
    added = {k: v for k, v in current.items() if k not in stored and v == defaults.get(k, ...)}
    return results if {**stored, **added} == current else None


def language_pair(src: str, tgt: str) -> str:
    """The run's translation direction as results.json and nmt-report write it: "en-de"."""
    return f"{src}-{tgt}"


def encoding_fields(encoding_cfg: Any) -> dict[str, Any]:
    """The encoding's fields of the record: its two methods and the options they read
    (a relative run's k, keys, values, share_heads; a T5 run's t5_* options)."""
    enc = encoding_cfg
    fields = {f"encoding_{side}": enc[side] for side in SIDE_KEYS[1:]}
    # By item: on a DictConfig `.keys` / `.values` are the mapping's methods.
    fields.update({option: enc[option] for option in used_options(enc)})
    return fields


def results_record(
    cfg: Any,
    *,
    steps: int,
    epochs: float,
    train_seconds: float,
    train_tokens: int,
    best_valid_bleu: float,
    parameters: int,
    wall_seconds: float,
    peak_rss_mib: float | None,
    device: str,
    precision: str,
    world_size: int,
    averaged: list[str],
    scores: dict[str, dict[str, Any]],
    resumed_from: str | None,
) -> dict[str, Any]:
    """A finished run's results.json; `scores` holds the final decode of each split."""
    d = cfg.decode
    return {
        "experiment": cfg.experiment,
        "model": cfg.model.name,
        "encoding": cfg.encoding.name,
        **encoding_fields(cfg.encoding),
        "data": cfg.data.name,
        # data.name alone does not tell Multi30k EN-DE from EN-FR
        "language_pair": language_pair(cfg.data.src, cfg.data.tgt),
        "seed": cfg.seed,
        "parameters": parameters,
        "steps": steps,
        "epochs": epochs,
        "train_seconds": train_seconds,
        "train_tokens": train_tokens,
        "train_tokens_per_s": train_tokens / max(train_seconds, 1e-9),
        # the training process, start to results: data, validation, checkpoints, final decode
        "wall_seconds": wall_seconds,
        # this launch's peak resident memory (a resumed run's earlier launches not included)
        "peak_rss_mib": peak_rss_mib,
        "device": device,
        "precision": precision,
        "world_size": world_size,
        "decode": {
            "beam": d.beam,
            "alpha": d.alpha,
            "max_len_a": d.max_len_a,
            "max_len_b": d.max_len_b,
        },
        "validation_during_training": {
            "beam": cfg.train.eval_beam,
            "max_sentences": cfg.train.eval_max_sentences,
        },
        "best_valid_bleu_during_training": best_valid_bleu,
        "averaged_checkpoints": averaged,
        "valid": scores["valid"],
        "test": scores["test"],
        # file names inside the run directory: results.json carries no machine's paths
        "hypotheses": {split: f"{split}.hyp.txt" for split in scores},
        "resumed_from": resumed_from,
        "status": "finished",
        "settings": run_settings(cfg),
    }


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    """Write results.json atomically: a reader sees the old record or the new one."""
    tmp = run_dir / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, run_dir / "results.json")
    return run_dir / "results.json"
