"""Checkpoints: atomic save, load with clear errors, compatibility checks, averaging.

A checkpoint is self-contained: the model weights, the full composed config and the
SentencePiece model bytes, so `nmt-translate ckpt.pt` needs nothing else. Training
checkpoints also hold the optimizer, scheduler, scaler, RNG and data position.

`average_checkpoints` averages the parameters of several checkpoints of one run
(the `nmt-average` command).
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from nmt.config import DecodeConfig, TrainConfig, to_container
from nmt.encodings import architecture_options
from nmt.errors import CheckpointError
from nmt.presets import complete_encoding
from nmt.textio import new_file_mode

FORMAT_VERSION = 1
NUMBERED = re.compile(r"checkpoint_(\d+)\.pt$")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a temp file in the same directory, then rename.

    A reader (or a crash, or SIGKILL mid-write) sees the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete temp files a killed `save_checkpoint` left in `directory` (SIGKILL skips cleanup)."""
    removed = []
    for tmp in Path(directory).glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _numpy_rng_globals() -> list[Any]:
    """What unpickling NumPy's uint32 RNG key array needs (numpy 1 and 2 name it apart)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


_OLD_NUMPY_RNG_GLOBALS = _numpy_rng_globals()


def _first_line(err: BaseException) -> str:
    """torch's unpickling errors are pages long; their gist is the line naming the global."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "global" in line]
    return (named or lines or [type(err).__name__])[0][:300]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, with one clear error if it cannot be."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():  # a run directory is the usual slip: name the files inside it
            found = sorted(p.name for p in path.glob("*.pt") if not p.name.startswith("."))
            best = "checkpoint_best.pt" in found or not found
            example = path / ("checkpoint_best.pt" if best else found[-1])
            held = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if found[10:] else "")
            raise CheckpointError(
                f"checkpoint {path} is a directory, not a checkpoint file; pass a .pt file "
                f"inside it, e.g. {example} "
                + (f"(it holds {held})" if found else "(it holds no .pt files)")
            )
        what = "is not a regular file" if path.exists() else "does not exist"
        raise CheckpointError(
            f"checkpoint {path} {what}; pass the path of a .pt file written by nmt-train "
            f"(e.g. RUN_DIR/checkpoint_best.pt)"
        )
    try:
        # Tensors, numbers, strings and containers only: unpickling never calls a function
        # the file names. NumPy's array reconstruction is allowed for the RNG state of
        # checkpoints written before it was stored as a tensor.
        with torch.serialization.safe_globals(_OLD_NUMPY_RNG_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # a damaged file, not a foreign function
            raise CheckpointError(
                f"checkpoint {path} is not readable ({_first_line(err)}); is it complete?"
            ) from None
        raise CheckpointError(
            f"refused to load {path}: it is not a plain checkpoint and loading it would run "
            f"code it names ({_first_line(err)}); nmt checkpoints hold only tensors, numbers "
            f"and text. Do not use files from a source you do not trust"
        ) from None
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is not readable ({_first_line(err)}); is it an nmt checkpoint?"
        ) from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(
            f"{path} is not an nmt checkpoint (no model weights and config in it)"
        )
    return state


def checkpoint_config(state: dict[str, Any]) -> DictConfig:
    """The checkpoint's config, completed for this version (`nmt.presets.complete_encoding`;
    `train` and `decode` keys added since the checkpoint was written take their defaults).

    Architecture keys are never filled in: a missing one must fail, not become the default."""
    cfg = OmegaConf.create(state["config"])
    if "encoding" in cfg:
        cfg.encoding = complete_encoding(OmegaConf.to_container(cfg.encoding))
    for section, schema in (("train", TrainConfig), ("decode", DecodeConfig)):
        if section in cfg:
            for key, value in to_container(OmegaConf.structured(schema)).items():
                if key not in cfg[section]:
                    cfg[section][key] = value
    return cfg


# Model keys that do not change what the parameters are or compute.
NON_ARCHITECTURE_MODEL_KEYS = (
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "name",  # a preset's label; the sizes themselves are compared
    "init_std",  # how the weights started, not what they are
)


def architecture_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two configs' `model` and `encoding` sections, as `key: x != y`.

    The encoding's name is compared too: absolute, rotary and none have the same parameters
    but different functions, so their average would be meaningless."""
    diffs = []
    ma, mb = a.get("model", {}), b.get("model", {})
    for key in sorted(set(ma) | set(mb)):
        if key not in NON_ARCHITECTURE_MODEL_KEYS and ma.get(key) != mb.get(key):
            diffs.append(f"model.{key}: {ma.get(key)} != {mb.get(key)}")
    ea, eb = (complete_encoding(c.get("encoding", {})) for c in (a, b))
    for key in dict.fromkeys((*architecture_options(ea), *architecture_options(eb))):
        if ea.get(key) != eb.get(key):
            diffs.append(f"encoding.{key}: {ea.get(key)} != {eb.get(key)}")
    return diffs


def build_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", state: dict[str, Any] | None = None
):
    """(model in eval mode, composed config, Vocabulary) from a checkpoint file."""
    from nmt.data.vocab import Vocabulary
    from nmt.model import build_model

    state = state if state is not None else load_checkpoint(path)
    cfg = checkpoint_config(state)
    if "vocab_model" not in state:
        raise CheckpointError(f"{path} has no SentencePiece model in it; it cannot translate text")
    vocab = Vocabulary.from_bytes(state["vocab_model"])
    expected = state.get("vocab_fingerprint")
    if expected is not None and expected != vocab.fingerprint:
        raise CheckpointError(
            f"{path}: its vocabulary (fingerprint {vocab.fingerprint}) is not the one the model "
            f"was trained with ({expected}); the file was assembled from different runs"
        )
    rows = state["model"].get("embedding.weight")
    if rows is not None and rows.size(0) != vocab.size:
        raise CheckpointError(
            f"{path}: the model has {rows.size(0)} embedding rows but its vocabulary has "
            f"{vocab.size} pieces; the weights and the vocabulary come from different runs"
        )
    model = build_model(cfg, vocab.size)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: the weights do not fit the architecture in its config ({err})"
        ) from None
    return model.to(device).eval(), cfg, vocab


def average_checkpoints(paths: list[str | Path]) -> dict[str, Any]:
    """The first checkpoint with its float parameters replaced by the mean over all `paths`.

    Refuses checkpoints of different architectures or vocabularies, naming what differs.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    first = load_checkpoint(paths[0])
    total = {k: v.double() if v.is_floating_point() else v for k, v in first["model"].items()}
    for path in paths[1:]:
        state = load_checkpoint(path)
        diffs = architecture_differences(first["config"], state["config"])
        if diffs:
            raise CheckpointError(
                f"cannot average {paths[0]} and {path}: different architectures "
                f"({'; '.join(diffs)})"
            )
        if state.get("vocab_fingerprint") != first.get("vocab_fingerprint"):
            raise CheckpointError(f"cannot average {paths[0]} and {path}: different vocabularies")
        unshared = sorted(set(total) ^ set(state["model"]))
        if unshared:
            raise CheckpointError(
                f"cannot average {paths[0]} and {path}: parameter {unshared[0]} is in only "
                f"one of them"
            )
        for key, value in state["model"].items():
            if value.shape != total[key].shape:
                raise CheckpointError(
                    f"cannot average {paths[0]} and {path}: parameter {key} has shape "
                    f"{tuple(total[key].shape)} in one and {tuple(value.shape)} in the other"
                )
            if value.is_floating_point():
                total[key] += value.double()
    averaged = {
        k: (v / len(paths)).to(first["model"][k].dtype) if v.is_floating_point() else v
        for k, v in total.items()
    }
    out = {
        k: v
        for k, v in first.items()
        if k in ("config", "vocab_model", "vocab_fingerprint", "step")
    }
    out.update(model=averaged, averaged_from=[str(p) for p in paths])
    return out


def numbered_checkpoints(run_dir: str | Path) -> list[Path]:
    """`checkpoint_<step>.pt` files of a run, oldest step first."""
    found = [
        (int(m.group(1)), p)
        for p in Path(run_dir).glob("checkpoint_*.pt")
        if (m := NUMBERED.search(p.name))
    ]
    return [p for _, p in sorted(found)]
