"""Typed schemas for every config group, registered with Hydra, and `validate(cfg)`.

The YAML files in `conf/` fill these dataclasses; a key that is not declared here is
rejected by Hydra at composition time, so a typo on the command line fails at once.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from nmt.encodings import encoding_schema, evaluation_options
from nmt.errors import ConfigError

NORMS = ("post", "pre")
# Encoding options that change evaluation only, never the weights: a checkpoint may be
# evaluated, averaged or resumed with other values, and an older one without them loads.
EVALUATION_ENCODING_OPTIONS = evaluation_options()
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# oneDNN kernels kept per cache, in training and decoding: bf16 matmuls keep one per input
# shape, gigabytes with variable-length batches; 64 cost no speed on Multi30k.
KERNEL_CACHE_ENTRIES = 64
MALLOC_KEEP_MIB = 2047  # train.malloc_keep_mib's default; decoding keeps as much
MALLOC_KEEP_MAX_MIB = (2**31 - 1) // 2**20  # mallopt(3) takes the threshold as a C int of bytes


@dataclass
class ModelConfig:
    name: str = "tiny"
    encoder_layers: int = 2
    decoder_layers: int = 2
    d_model: int = 64
    heads: int = 4
    d_ff: int = 256
    dropout: float = 0.1  # residual and embedding dropout ("layer_prepostprocess_dropout")
    attention_dropout: float = 0.0  # on the attention weights
    activation_dropout: float = 0.0  # inside the feed-forward block, after ReLU
    norm: str = "post"  # the paper (and Vaswani 2017) is post-norm
    tie_embeddings: bool = True  # one table for source, target and output projection
    init_std: float | None = None  # None: d_model ** -0.5 for embeddings (T2T)


# The `encoding` group: `name` (the preset), `input` and `attention` (one registered method
# each) and every method's options, each declared in its own module of `nmt.encodings`.
EncodingConfig = encoding_schema()


@dataclass
class ToyConfig:
    """The built-in synthetic task: needs word order to be solved (see nmt/data/corpora.py).

    Source sentences are uniform random words from `vocab` syllables ("ba", "ke", ...); the
    target translates each word through a fixed seeded dictionary to an upper-case word and
    then reverses the words inside each consecutive chunk of `chunk` words.
    """

    vocab: int = 32  # source word types (as many target word types)
    train_size: int = 20000
    valid_size: int = 500
    test_size: int = 500
    # Lengths stay within the default clipping distance encoding.k=16 (15 words + EOS): the
    # output must be exactly as long as the input, and a relative-only model cannot count
    # past k (docs/configuration.md, "The toy task").
    min_len: int = 4
    max_len: int = 15  # train and valid lengths (words), uniform in [min_len, max_len]
    test_min_len: int = 4
    test_max_len: int = 15  # raise above max_len (and k) to study length generalisation
    chunk: int = 3  # reordering rule: reverse the words inside each chunk of this size
    seed: int = 1234


@dataclass
class DataConfig:
    name: str = "toy"  # a label (results, logs); the cache is keyed by content, not by name
    source: str = "toy"  # toy | local | hub
    root: str | None = None  # directory of {split}.{lang}[.gz] files for source=local
    hub_name: str | None = None  # `datasets` hub name, or a local save_to_disk / parquet directory
    hub_config: str | None = None  # the hub subset, e.g. "de-en"
    src: str = "en"
    tgt: str = "de"
    train_split: str = "train"
    valid_split: str = "valid"
    test_split: str = "test"
    vocab_size: int = 8000  # joint SentencePiece pieces, incl. 4 specials and 256 byte pieces
    spm_model_type: str = "unigram"  # unigram | bpe
    spm_character_coverage: float = 1.0  # rarer characters fall back to bytes
    spm_max_sentences: int = 2_000_000  # sample this many training sentences for SentencePiece
    max_len: int = 256  # training pairs longer than this (subwords) are dropped
    max_len_ratio: float = 3.0  # training pairs with a longer/shorter ratio above this are dropped
    cache_dir: str = "${oc.env:NMT_CACHE_DIR,'~/.cache/nmt'}"  # vocabularies and encoded ids
    toy: ToyConfig = field(default_factory=ToyConfig)


@dataclass
class TrainConfig:
    max_tokens: int = 4096  # per batch, source + target padded positions (paper: 4096 per GPU)
    # Pad batch lengths up to a multiple of this (1: none): fewer distinct batch shapes, more
    # padding; it does not pay on the CPU (docs/benchmarks.md, "Padding batch lengths ...")
    length_multiple: int = 1
    update_freq: int = 1  # gradient accumulation: batches per optimizer step
    max_steps: int = 100_000  # 0: no step budget (then max_epochs must be set)
    max_epochs: int = 0  # 0: no epoch budget
    lr_scale: float = 1.0  # multiplies d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
    warmup_steps: int = 4000
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 0.0  # 0: no gradient clipping
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    # CPU, glibc: freed blocks up to this many MiB stay in the process for reuse instead of
    # going back to the OS. The (B*T, V) logits and their gradients are tens of MiB; glibc
    # unmaps such blocks on free, and the next step page-faults them in again, 4 KiB at a
    # time (README, "Training"). 0: glibc's defaults. At most 2047.
    malloc_keep_mib: int = MALLOC_KEEP_MIB
    # CPU: oneDNN kernels kept per cache (runtime.bound_kernel_caches); 0: the default 1,024
    kernel_cache_entries: int = KERNEL_CACHE_ENTRIES
    # Target positions whose logits the loss computes at a time (with their gradient, in
    # the forward pass): the (B*T, V) logits never exist whole. 0: materialise them.
    loss_chunk_tokens: int = 1024
    log_every: int = 50
    eval_every: int = 1000
    eval_max_sentences: int = 0  # 0: the whole validation set
    eval_beam: int = 1  # 1: greedy validation decoding (fast); the test set always uses decode.beam
    save_every: int = 1000
    keep_last: int = 5
    average_last: int = 0  # average the last N checkpoints before the final test
    resume: bool = True  # continue from checkpoint_last.pt in the run directory if present
    tensorboard: bool = True  # event files when the `tb` extra is installed
    # How long ranks wait in a collective, e.g. for rank 0's validation and final decode;
    # NCCL's default (10 minutes) is shorter than decoding a WMT test set with the beam.
    dist_timeout_minutes: int = 120


@dataclass
class DecodeConfig:
    beam: int = 4
    alpha: float = 0.6  # GNMT length penalty ((5 + |Y|) / 6) ** alpha; 0 = raw log-probability
    max_len_a: float = 1.0  # max output length = a * source length + b
    max_len_b: int = 50
    max_tokens: int = 8000  # source tokens per decoding batch
    nbest: int = 1
    # Added to UNK's log-probability at every step (fairseq's --unkpen, as a log-probability):
    # 0 leaves UNK alone, < 0 penalises it, -inf bans it.
    unk_penalty: float = 0.0
    # Which EOS candidates end a hypothesis: those in the top `beam` (fairseq; beam 1 = greedy)
    # or in the top 2 * beam (tensor2tensor). See nmt/search.py.
    eos_rule: str = "top_beam"
    # BLEU by source length: upper ends of the buckets, in subwords (1-10, ..., 31-50, 51+)
    length_buckets: list[int] = field(default_factory=lambda: [10, 20, 30, 50])


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    seed: int = 1
    experiment: str = "default"  # a label stored in results.json


def register_configs() -> None:
    """Register the schema so `conf/config.yaml` composes into a typed config."""
    cs = ConfigStore.instance()
    cs.store(name="nmt_schema", node=Config)


def validate_decode(decode: Any) -> None:
    """Raise one `ConfigError` naming the first bad `decode` value."""
    if decode.beam < 1:
        raise ConfigError(f"decode.beam={decode.beam} must be >= 1 (1 is greedy)")
    if not 0 <= decode.alpha < float("inf"):  # NaN fails every comparison
        raise ConfigError(f"decode.alpha={decode.alpha} must be >= 0 (0: no length penalty)")
    if decode.max_tokens < 1:
        raise ConfigError(f"decode.max_tokens={decode.max_tokens} must be >= 1")
    # max_len = a * src_len + b: a negative term silently empties every output.
    if not (0 <= decode.max_len_a < float("inf") and decode.max_len_b >= 0):
        raise ConfigError(
            f"decode.max_len_a={decode.max_len_a} and decode.max_len_b={decode.max_len_b} "
            f"must be >= 0 (max output length = a * source length + b)"
        )
    if not 1 <= decode.nbest <= decode.beam:
        raise ConfigError(f"decode.nbest={decode.nbest} must be between 1 and decode.beam")
    # Configs saved in older checkpoints lack these two keys: the defaults apply.
    unk_penalty = getattr(decode, "unk_penalty", DecodeConfig.unk_penalty)
    eos_rule = getattr(decode, "eos_rule", DecodeConfig.eos_rule)
    if not unk_penalty <= 0:  # NaN fails too; > 0 would break the search's stopping bound
        raise ConfigError(
            f"decode.unk_penalty={unk_penalty} must be <= 0: a log-probability added to UNK "
            f"(0: none, -inf: never output UNK)"
        )
    if eos_rule not in ("top_beam", "top_2beam"):
        raise ConfigError(
            f"decode.eos_rule={eos_rule!r} is unknown; choose top_beam (fairseq: EOS ends a "
            f"hypothesis only among the top beam candidates) or top_2beam (tensor2tensor)"
        )


def decode_settings(node: Any = None, **overrides: Any) -> DecodeConfig:
    """The decode settings from config to search: a `decode` node or dict (keys it lacks at
    their defaults, others ignored) with the overrides that are not None; checked here."""
    given = {k: v for k, v in (node or {}).items() if k in vars(DecodeConfig()) and v is not None}
    given.update((k, v) for k, v in overrides.items() if v is not None)
    settings = DecodeConfig(**given)  # an unknown override is a TypeError
    settings.length_buckets = list(settings.length_buckets)  # a plain list, not a ListConfig
    validate_decode(settings)
    return settings


@functools.cache
def encoding_presets() -> tuple[str, ...]:
    """The names of `conf/encoding/*.yaml`: what `encoding=NAME` and `encoding.name` take."""
    folder = importlib.resources.files("nmt.conf") / "encoding"
    return tuple(
        sorted(f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml"))
    )


def compose(
    overrides: list[str] | None = None, config_name: str = "config", **hydra_options: Any
) -> DictConfig:
    """Compose `conf/` with command-line style overrides, outside a Hydra app (tests,
    notebooks); `hydra_options` go to `hydra.compose` (e.g. return_hydra_config=True)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_configs()
    with initialize_config_module(config_module="nmt.conf", version_base="1.3"):
        return hydra_compose(config_name, list(overrides or []), **hydra_options)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys ("encoding.k" -> 16); lists become tuples."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def to_container(cfg: Any) -> dict:
    """A plain dict of a config (resolved), for JSON files and checkpoints."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def __getattr__(name: str) -> Any:
    # `nmt.config.validate` and `validate_data` as documented before the checks moved to
    # `nmt.config_checks`, imported on first use: that module imports this one.
    if name in ("validate", "validate_data"):
        from nmt import config_checks

        return getattr(config_checks, name)
    raise AttributeError(f"module 'nmt.config' has no attribute {name!r}")
