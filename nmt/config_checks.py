"""`validate(cfg)`: every value of a composed config checked before any work, each bad one
refused with one `ConfigError` that names it and its fix. The schemas and the constants the
checks use live in `nmt.config`."""

from __future__ import annotations

from typing import Any

from nmt.config import (
    DEVICES,
    MALLOC_KEEP_MAX_MIB,
    NORMS,
    PRECISIONS,
    encoding_presets,
    validate_decode,
)
from nmt.encodings import check_encoding, position_limit
from nmt.errors import ConfigError


def validate(cfg: Any) -> None:
    """Raise one `ConfigError` naming the first bad value and how to fix it."""
    enc, model = cfg.encoding, cfg.model
    if enc.name not in encoding_presets():
        raise ConfigError(
            f"encoding.name={enc.name!r} is unknown; choose one of "
            f"{', '.join(encoding_presets())} (e.g. encoding=relative)"
        )
    if model.d_model % model.heads != 0:
        raise ConfigError(
            f"model.d_model={model.d_model} is not divisible by model.heads={model.heads}; "
            f"pick heads that divide d_model (d_head = d_model / heads)"
        )
    if model.norm not in NORMS:
        raise ConfigError(f"model.norm={model.norm!r} is unknown; choose post or pre")
    for name in ("encoder_layers", "decoder_layers", "d_model", "heads", "d_ff"):
        if getattr(model, name) < 1:
            raise ConfigError(f"model.{name}={getattr(model, name)} must be >= 1")
    for name in ("dropout", "attention_dropout", "activation_dropout"):
        if not 0.0 <= getattr(model, name) < 1.0:
            raise ConfigError(f"model.{name}={getattr(model, name)} must be in [0, 1)")
    check_encoding(enc, model)
    # NumPy's global generator, seeded with it, takes 0 ... 2**32 - 1.
    if "seed" in cfg and not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed={cfg.seed} must be between 0 and {2**32 - 1}")
    if "data" in cfg:
        validate_data(cfg.data)
        check_encoding(enc, model, cfg.data)
    if "train" in cfg:
        _validate_train(cfg.train)
    if "decode" in cfg:
        validate_decode(cfg.decode)
    limit = position_limit(enc)
    if "data" in cfg and limit is not None:
        # A training row holds max_len subwords and one EOS (source) or BOS (target input),
        # padded up to the multiple.
        m = cfg.train.length_multiple if "train" in cfg else 1
        if (longest := -(-(cfg.data.max_len + 1) // m) * m) > limit:
            raise ConfigError(
                f"encoding.input={enc.input} has a table of {limit} positions but "
                f"data.max_len={cfg.data.max_len} allows longer training sentences"
                + (f" (padded to a multiple of train.length_multiple={m})" if m > 1 else "")
                + f"; raise encoding.max_len to at least {longest}"
            )


def validate_data(data: Any) -> None:
    """Raise one `ConfigError` naming the first bad `data` value."""
    try:
        root = data.root
    except Exception as exc:  # an unset ${oc.env:...}, e.g. NMT_DATA_DIR for data=multi30k
        raise ConfigError(
            f"data.root cannot be resolved ({str(exc).splitlines()[0]}); set the environment "
            f"variable it names "
            f"(NMT_DATA_DIR: the directory holding multi30k/ etc.) or pass data.root=DIR"
        ) from None
    if data.source not in ("toy", "local", "hub"):
        raise ConfigError(f"data.source={data.source!r} is unknown; choose toy, local or hub")
    if data.source == "local" and not root:
        raise ConfigError(
            "data.source=local needs data.root=DIR, a directory of {split}.{lang}[.gz] files"
        )
    if data.source == "hub" and not data.hub_name:
        raise ConfigError(
            "data.source=hub needs data.hub_name=NAME: a datasets hub name (e.g. wmt/wmt19 with "
            "data.hub_config=de-en) or a local save_to_disk / parquet directory"
        )
    if data.src == data.tgt:
        raise ConfigError(f"data.src and data.tgt are both {data.src!r}; pick two languages")
    # Byte fallback reserves 256 byte pieces besides the 4 special ids (nmt/data/vocab.py).
    if data.vocab_size < 261:
        raise ConfigError(
            f"data.vocab_size={data.vocab_size} is too small: 4 special ids and 256 byte-fallback "
            f"pieces come first; use at least 261 plus the corpus's characters (e.g. 8000)"
        )
    if data.spm_model_type not in ("unigram", "bpe"):
        raise ConfigError(
            f"data.spm_model_type={data.spm_model_type!r} is unknown; choose unigram or bpe"
        )
    if not 0.0 < data.spm_character_coverage <= 1.0:
        raise ConfigError(
            f"data.spm_character_coverage={data.spm_character_coverage} must be in (0, 1]"
        )
    if data.spm_max_sentences < 2:
        raise ConfigError(f"data.spm_max_sentences={data.spm_max_sentences} must be >= 2")
    if data.max_len < 1:
        raise ConfigError(f"data.max_len={data.max_len} must be >= 1")
    if data.max_len_ratio < 1.0:
        raise ConfigError(f"data.max_len_ratio={data.max_len_ratio} must be >= 1")
    if data.source == "toy":
        toy = data.toy
        if toy.vocab < 2 or toy.chunk < 1:
            raise ConfigError(
                f"data.toy.vocab={toy.vocab} must be >= 2 and data.toy.chunk={toy.chunk} >= 1"
            )
        for name in ("train_size", "valid_size", "test_size"):
            if getattr(toy, name) < 1:
                raise ConfigError(f"data.toy.{name}={getattr(toy, name)} must be >= 1")
        for lo, hi in (("min_len", "max_len"), ("test_min_len", "test_max_len")):
            if not 1 <= getattr(toy, lo) <= getattr(toy, hi):
                raise ConfigError(
                    f"data.toy.{lo}={getattr(toy, lo)} and data.toy.{hi}={getattr(toy, hi)} "
                    f"must satisfy 1 <= {lo} <= {hi}"
                )


def _validate_train(train: Any) -> None:
    if train.device not in DEVICES:
        raise ConfigError(f"train.device={train.device!r} is unknown; choose one of {DEVICES}")
    if train.precision not in PRECISIONS:
        raise ConfigError(
            f"train.precision={train.precision!r} is unknown; choose one of {PRECISIONS}"
        )
    at_least_one = ("max_tokens", "length_multiple", "update_freq", "warmup_steps")
    for name in (*at_least_one, "log_every", "eval_every", "save_every", "dist_timeout_minutes"):
        if getattr(train, name) < 1:
            raise ConfigError(f"train.{name}={getattr(train, name)} must be >= 1")
    if train.max_steps < 1 and train.max_epochs < 1:
        raise ConfigError("set train.max_steps or train.max_epochs to a positive budget")
    if not 0 <= train.malloc_keep_mib <= MALLOC_KEEP_MAX_MIB:
        raise ConfigError(
            f"train.malloc_keep_mib={train.malloc_keep_mib} must be between 0 (glibc's defaults) "
            f"and {MALLOC_KEEP_MAX_MIB} (mallopt takes a C int of bytes)"
        )
    zero_means = {"kernel_cache_entries": "oneDNN's and PyTorch's defaults"}
    zero_means["loss_chunk_tokens"] = "the whole (B*T, V) logits at once"
    for name, meaning in zero_means.items():
        if getattr(train, name) < 0:
            raise ConfigError(f"train.{name}={getattr(train, name)} must be >= 0 (0: {meaning})")
    if 2 * train.length_multiple > train.max_tokens:  # a pair pads to >= m a side
        raise ConfigError(
            f"train.length_multiple={train.length_multiple} pads every pair past "
            f"train.max_tokens={train.max_tokens}; use at most {train.max_tokens // 2}"
        )
    if not 0.0 <= train.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing={train.label_smoothing} must be in [0, 1)")
