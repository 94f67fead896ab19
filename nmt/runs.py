"""Runs on disk as rows of a table: which runs there are, their configs, what was swept.

A run directory holds results.json (finished), failed.json (failed) or only .hydra/
(unfinished). Rows group the finished runs by the values of the swept config keys; the
seed is averaged over.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nmt.config import flatten
from nmt.encodings import SIDE_KEYS, all_methods, used_options
from nmt.errors import ConfigError
from nmt.presets import complete_encoding
from nmt.results import MEASURES, RUNTIME_KEYS, language_pair, measures

# Config keys that never define a row: how the run was executed, where the cache and the
# local corpus live (the same corpus on two machines is one row; data.hub_name, the name of
# a dataset, is not ignored), the seed.
IGNORED_KEYS = (*RUNTIME_KEYS, "data.cache_dir", "data.root", "seed")


@dataclass
class Run:
    path: Path
    status: str  # finished | failed | unfinished
    config: dict[str, Any]  # flattened, "encoding.k" -> 16
    results: dict[str, Any] | None = None
    detail: str = ""
    values: dict[str, Any] = field(default_factory=dict)  # the swept keys' values


def _run_config(run_dir: Path, results: dict[str, Any] | None) -> dict[str, Any]:
    hydra_config = run_dir / ".hydra" / "config.yaml"
    if hydra_config.exists():
        config = flatten(yaml.safe_load(hydra_config.read_text()) or {})
        if config.get("train.precision") == "auto" and (results or {}).get("precision"):
            # What auto chose on the run's machine: fp32 and bf16 runs never share a row.
            config["train.precision"] = results["precision"]  # type: ignore[index]
        return config
    if results is not None:  # a run started from Python: the key choices are in results.json
        config = {
            "model.name": results.get("model"),
            "encoding.name": results.get("encoding"),
            "data.name": results.get("data"),
            **_pair_keys(results.get("language_pair")),
            "seed": results.get("seed"),
            "experiment": results.get("experiment"),
        }
        # Records older than "language_pair" carry the pair in their settings; the rest of
        # the settings stays out (machine paths there are hashed and would split rows).
        settings = results.get("settings") or {}
        config.update({key: settings[key] for key in ("data.src", "data.tgt") if key in settings})
        options = {o for m in all_methods() for o in m.option_names}
        for key, value in results.items():
            if key in options:
                config[f"encoding.{key}"] = value
            elif key.startswith("encoding_") and key[len("encoding_") :] in SIDE_KEYS:
                config[f"encoding.{key[len('encoding_') :]}"] = value
        return config
    return {}


def _pair_keys(pair: str | None) -> dict[str, str]:
    """data.src and data.tgt from results.json's "en-de" (records before it have none)."""
    if not pair or "-" not in pair:
        return {}
    src, tgt = pair.split("-", 1)
    return {"data.src": src, "data.tgt": tgt}


def corpus(config: dict[str, Any]) -> str:
    """What a run was trained on, as the report's data column shows it: "multi30k en-de"."""
    name = config.get("data.name") or "?"
    if config.get("data.src") is None or config.get("data.tgt") is None:
        return name
    return f"{name} {language_pair(config['data.src'], config['data.tgt'])}"


def _without_unused_encoding_options(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config without the encoding options its methods do not read (an absolute
    run's encoding.k, a relative run's rotary_factor): they must not tell its row apart.
    Configs written before encoding.input / encoding.attention existed get them here."""
    enc = {key[len("encoding.") :]: v for key, v in config.items() if key.startswith("encoding.")}
    if "name" not in enc:
        return config
    try:
        enc = complete_encoding(enc)
        used = set(used_options(enc))
    except ConfigError:  # a preset or method this version does not have: keep every key
        return config
    every = {option for m in all_methods() for option in m.option_names}
    out = {
        key: v
        for key, v in config.items()
        if not (key.startswith("encoding.") and key[len("encoding.") :] in every - used)
    }
    out.update({f"encoding.{key}": enc[key] for key in SIDE_KEYS[1:]})
    return out


def _last_step(run_dir: Path) -> int | None:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    step = None
    for line in metrics.read_text().splitlines():
        try:
            step = json.loads(line).get("step", step)
        except json.JSONDecodeError:  # a line being written right now
            continue
    return step


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run directory under `paths`: one with results.json, failed.json or .hydra/."""
    dirs: set[Path] = set()
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist; pass run or multirun directories")
        for marker in ("results.json", "failed.json", ".hydra/config.yaml"):
            for found in root.rglob(marker):
                dirs.add(found.parent.parent if marker.startswith(".hydra") else found.parent)
    runs = []
    for run_dir in sorted(dirs):
        results_file, failed_file = run_dir / "results.json", run_dir / "failed.json"
        results = json.loads(results_file.read_text()) if results_file.exists() else None
        config = _without_unused_encoding_options(_run_config(run_dir, results))
        if results is not None:
            runs.append(Run(run_dir, "finished", config, results))
        elif failed_file.exists():
            error = json.loads(failed_file.read_text()).get("error", "")
            runs.append(Run(run_dir, "failed", config, detail=error))
        else:
            step = _last_step(run_dir)
            detail = f"last logged step {step}" if step is not None else "no step logged yet"
            runs.append(Run(run_dir, "unfinished", config, detail=detail))
    return runs


def swept_keys(runs: list[Run]) -> list[str]:
    """Config keys whose values differ between runs (the seed and file locations excluded)."""
    keys: set[str] = set()
    for run in runs:
        keys.update(run.config)
    swept = []
    for key in sorted(keys):
        if key in IGNORED_KEYS or key.startswith("hydra."):
            continue
        # A key only some runs have (added to the schema since) is swept only if the runs
        # that have it disagree.
        if len({repr(run.config[key]) for run in runs if key in run.config}) > 1:
            swept.append(key)
    # Keys that follow from another swept key (e.g. model.d_model with model.name) add no row.
    return [k for k in swept if not _determined_by_other(k, swept, runs)]


def _determined_by_other(key: str, swept: list[str], runs: list[Run]) -> bool:
    for other in swept:
        if other == key or not other.endswith(".name"):
            continue
        if other.rsplit(".", 1)[0] != key.rsplit(".", 1)[0]:
            continue
        mapping: dict[Any, set] = defaultdict(set)
        for run in runs:
            mapping[repr(run.config.get(other))].add(repr(run.config.get(key)))
        if all(len(v) == 1 for v in mapping.values()):
            return True
    return False


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _sort_key(value: Any) -> tuple:
    if isinstance(value, bool) or value is None:
        return (0, str(value))
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


def summarize(runs: list[Run], keys: list[str]) -> list[dict[str, Any]]:
    """One row per combination of swept values: mean and std over seeds of every measure."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        run.values = {k: run.config.get(k) for k in keys}
        if run.status == "finished":
            groups[tuple(run.values[k] for k in keys)].append(run)
    rows = []
    for combo in sorted(groups, key=lambda c: tuple(_sort_key(v) for v in c)):
        members = groups[combo]
        row: dict[str, Any] = dict(zip(keys, combo, strict=True))
        measured = [measures(r.results or {}) for r in members]
        for name in MEASURES:
            row[name], row[f"{name}_std"] = _mean_std([m[name] for m in measured])
            row[f"{name}_n"] = sum(m[name] is not None for m in measured)
        seeds = (r.config.get("seed") for r in members)
        row["seeds"] = sorted(seed for seed in seeds if seed is not None)
        row["runs"] = len(members)
        row["data"] = ", ".join(sorted({corpus(r.config) for r in members}))
        row["by_length"] = _by_length(members)
        rows.append(row)
    return rows


def _by_length(members: list[Run]) -> list[dict[str, Any]]:
    """Mean test BLEU per source-length bucket over the runs of one row."""
    buckets: dict[str, list[float]] = defaultdict(list)
    order: list[str] = []
    for run in members:
        for b in (run.results or {}).get("test", {}).get("by_length", []):
            if b["bucket"] not in order:
                order.append(b["bucket"])
            if b.get("bleu") is not None:
                buckets[b["bucket"]].append(b["bleu"])
    return [
        {"bucket": b, "bleu": _mean_std(buckets[b])[0], "sentences_runs": len(buckets[b])}
        for b in order
    ]
