"""From a data config to cached SentencePiece ids: resolve, check, key, lock, build or load.

Cache layout under `data.cache_dir` (default ~/.cache/nmt, or $NMT_CACHE_DIR):

    vocab/<kind>-<src>-<tgt>-<vocab key>/spm.model     joint SentencePiece model
    data/<kind>-<src>-<tgt>-<data key>/                 one prepared corpus:
        spm.model                                       a copy, so the entry stands alone
        meta.json                                       settings, split names, counts, timings
        {train,valid,test}.{src,tgt}.ids.npy            all ids of a side, flat int32
        {train,valid,test}.{src,tgt}.offsets.npy        N + 1 offsets into it
        {train,valid,test}.{src,tgt}.txt                the raw sentences kept, one per line
    locks/<key>.lock                                    filelock, one per entry
    tmp/                                                entries being built (renamed when done);
                                                        a killed build's removed by the next run

The vocab key hashes the training split and the SentencePiece settings; the data key, the
vocab key, the other splits, the split names and the filters: changing `max_len` re-encodes
without re-training SentencePiece. An entry only ever appears complete: it is built in
tmp/ and renamed under a lock, so concurrent runs build it once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nmt.config_checks import validate_data
from nmt.data.cache_dirs import atomic_dir, locked, remove_entry, remove_stale
from nmt.data.corpora import ROLES, Corpus, ParallelText, open_corpus
from nmt.data.errors import DataError
from nmt.data.store import EncodedSplit, RaggedIds, RaggedIdsWriter, write_text
from nmt.data.vocab import EOS, Vocabulary, train_vocabulary
from nmt.errors import ConfigError

FORMAT_VERSION = 1  # bump when the on-disk layout or the encoding changes
SPM_SAMPLE_SEED = 0
# Training pairs read, encoded and written at a time: bounds memory whatever the corpus size
# (docs/benchmarks.md, "Data preparation"). The cache files do not depend on it.
PREPARE_CHUNK_PAIRS = 20_000
log = logging.getLogger("nmt.data")


@dataclass
class PreparedData:
    """The vocabulary and the encoded train / valid / test splits of one data config."""

    vocab: Vocabulary
    splits: dict[str, EncodedSplit]
    path: Path  # the cache entry
    cache_hit: bool
    meta: dict[str, Any]


def resolve_data_config(data_cfg: Any) -> dict[str, Any]:
    """The data config as a plain, validated dict with interpolations resolved."""
    if dataclasses.is_dataclass(data_cfg):
        data_cfg = OmegaConf.structured(data_cfg)
    elif isinstance(data_cfg, Mapping) and not isinstance(data_cfg, DictConfig):
        data_cfg = OmegaConf.create(dict(data_cfg))
    validate_data(data_cfg)
    try:
        cfg = OmegaConf.to_container(data_cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve the data config: {str(exc).splitlines()[0]}") from None
    cfg["cache_dir"] = os.path.expanduser(cfg["cache_dir"])  # type: ignore[index]
    return cfg  # type: ignore[return-value]


def prepare_data(data_cfg: Any) -> PreparedData:
    """Build (once) or load from the cache the vocabulary and encoded splits of `data_cfg`."""
    cfg = resolve_data_config(data_cfg)
    corpus = open_corpus(cfg)  # raises on a missing file, split or language before any work
    names = {role: cfg[f"{role}_split"] for role in ROLES}
    fingerprints = {role: corpus.fingerprint(split) for role, split in names.items()}
    vocab_key = _hash(
        format=FORMAT_VERSION,
        kind=corpus.kind,
        train=fingerprints["train"],
        src=cfg["src"],
        tgt=cfg["tgt"],
        vocab_size=cfg["vocab_size"],
        model_type=cfg["spm_model_type"],
        coverage=cfg["spm_character_coverage"],
        max_sentences=cfg["spm_max_sentences"],
        seed=SPM_SAMPLE_SEED,
    )
    data_key = _hash(
        vocab=vocab_key,
        valid=fingerprints["valid"],
        test=fingerprints["test"],
        names=names,
        max_len=cfg["max_len"],
        max_len_ratio=cfg["max_len_ratio"],
    )
    root = Path(cfg["cache_dir"])
    stem = f"{corpus.kind}-{cfg['src']}-{cfg['tgt']}"
    entry = root / "data" / f"{stem}-{data_key[:20]}"
    vocab_dir = root / "vocab" / f"{stem}-{vocab_key[:20]}"

    remove_stale(root)
    with locked(root, entry.name):
        if entry.is_dir():
            try:
                data = load_prepared(entry, cache_hit=True)
                data.meta["name"] = cfg["name"]  # same content may be cached under another label
                log.info("cache hit %s", entry)
                return data
            except (OSError, ValueError, KeyError) as exc:  # a damaged entry: rebuild it
                log.warning("cache entry %s is unreadable (%s); rebuilding", entry, exc)
                remove_entry(entry, root)
        log.info("cache miss, building %s", entry)
        start = time.perf_counter()
        with atomic_dir(entry, root) as tmp:
            meta = _build(cfg, corpus, names, tmp, root, vocab_dir)
            meta.update(
                format=FORMAT_VERSION,
                name=cfg["name"],
                source=cfg["source"],
                src=cfg["src"],
                tgt=cfg["tgt"],
                data_key=data_key,
                vocab_key=vocab_key,
                fingerprints=fingerprints,
                settings={k: v for k, v in cfg.items() if k not in ("toy", "cache_dir")}
                | ({"toy": cfg["toy"]} if corpus.kind == "toy" else {}),
                build_seconds=round(time.perf_counter() - start, 3),
            )
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        log.info("built in %.1f s", time.perf_counter() - start)
        return load_prepared(entry, cache_hit=False)


def load_prepared(entry: Path, cache_hit: bool = True) -> PreparedData:
    """Open a cache entry written by `prepare_data` (ids memory-mapped, text read on demand)."""
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {meta.get('format')} is not {FORMAT_VERSION}")
    vocab = Vocabulary.load(entry / "spm.model")
    splits = {}
    for role in ROLES:
        info = meta["splits"][role]
        splits[role] = EncodedSplit(
            info["name"],
            RaggedIds.load(entry, f"{role}.src"),
            RaggedIds.load(entry, f"{role}.tgt"),
            text_files=(entry / f"{role}.src.txt", entry / f"{role}.tgt.txt"),
        )
        if len(splits[role]) != info["pairs"]:
            raise ValueError(f"{role}: {len(splits[role])} pairs, meta.json says {info['pairs']}")
    return PreparedData(vocab, splits, entry, cache_hit, meta)


def _build(
    cfg: dict[str, Any],
    corpus: Corpus,
    names: dict[str, str],
    out: Path,
    root: Path,
    vocab_dir: Path,
) -> dict[str, Any]:
    """Read, check, train or reuse SentencePiece, encode, filter train; write into `out`.

    The training split is streamed in chunks of PREPARE_CHUNK_PAIRS pairs, straight from the
    corpus into the cache files: a WMT14 EN-FR split (36M pairs) never sits in memory.
    """
    # Valid and test are small: read them first, so a bad file there fails before the long work.
    held = {role: corpus.read(names[role]) for role in ("valid", "test")}
    for role, text in held.items():
        if len(text) == 0:  # validation and the final scores would divide by zero sentences
            raise DataError(
                f"the {'validation' if role == 'valid' else 'test'} split {names[role]!r} "
                f"(data.{role}_split) is empty{_files(corpus, names[role])}; add sentence "
                f"pairs to it or set data.{role}_split to a split that has them"
            )
    vocab = _vocabulary(cfg, corpus, names["train"], vocab_dir, root)
    shutil.copyfile(vocab.path, out / "spm.model")

    meta: dict[str, Any] = {
        "vocab": {"size": vocab.size, "fingerprint": vocab.fingerprint},
        "splits": {},
    }
    for role in ROLES:
        if role == "train":
            limits = (cfg["max_len"], cfg["max_len_ratio"])
            src_lengths, tgt_lengths, counts = _write_split(
                vocab, corpus.chunks(names[role], PREPARE_CHUNK_PAIRS), out, role, limits
            )
            log.info(
                "train %s: kept %d of %d pairs (dropped: %d empty, %d over max_len=%d "
                "subwords, %d with length ratio over max_len_ratio=%g)",
                names[role],
                counts["kept"],
                counts["read"],
                counts["empty"],
                counts["too_long"],
                cfg["max_len"],
                counts["ratio"],
                cfg["max_len_ratio"],
            )
            if counts["kept"] == 0:
                raise DataError(
                    f"the training split {names['train']!r} is empty after filtering: of "
                    f"{counts['read']} pairs, {counts['empty']} are empty, {counts['too_long']} "
                    f"exceed data.max_len={cfg['max_len']} subwords and {counts['ratio']} exceed "
                    f"data.max_len_ratio={cfg['max_len_ratio']}; raise those limits"
                )
        else:  # valid and test are never filtered
            src_lengths, tgt_lengths, counts = _write_split(
                vocab, iter([held[role]]), out, role, None
            )
        meta["splits"][role] = {
            "name": names[role],
            "pairs": len(src_lengths),
            "filter": counts,
            "src_tokens": int(src_lengths.sum() - len(src_lengths)),
            "tgt_tokens": int(tgt_lengths.sum()),
        }
    return meta


def _files(corpus: Corpus, split: str) -> str:
    """': A and B have no lines' for a split of files (a local corpus), else ''."""
    files = getattr(corpus, "files", {}).get(split)
    return f": {' and '.join(map(str, files))} have no lines" if files else ""


def _write_split(
    vocab: Vocabulary,
    chunks: Iterator[ParallelText],
    out: Path,
    role: str,
    limits: tuple[int, float] | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Encode a split chunk by chunk into its cache files, keeping only the pairs that pass
    the filter when `limits` = (max_len, max_len_ratio); the kept source (with EOS) and
    target lengths, and the filter counts."""
    texts = (out / f"{role}.src.txt", out / f"{role}.tgt.txt")
    for path in texts:
        path.write_bytes(b"")
    counts = dict.fromkeys(("read", "empty", "too_long", "ratio", "kept"), 0)
    with (
        RaggedIdsWriter(out, f"{role}.src") as src_ids,
        RaggedIdsWriter(out, f"{role}.tgt") as tgt_ids,
    ):
        for text in chunks:
            src, tgt = _encode(vocab, text.src, append=EOS), _encode(vocab, text.tgt)
            if limits is not None:
                keep, chunk_counts = _filter(src.lengths - 1, tgt.lengths, _nonempty(text), *limits)
                for key, value in chunk_counts.items():
                    counts[key] += value
                src, tgt = src.select(keep), tgt.select(keep)
                idx = np.flatnonzero(keep)
                text = ParallelText([text.src[i] for i in idx], [text.tgt[i] for i in idx])
            src_ids.append(src)
            tgt_ids.append(tgt)
            for path, lines in zip(texts, (text.src, text.tgt), strict=True):
                write_text(path, lines, append=True)
        src_lengths, tgt_lengths = src_ids.close(), tgt_ids.close()
    if limits is None:
        counts = {"read": len(src_lengths), "kept": len(src_lengths)}
    return src_lengths, tgt_lengths, counts


def _nonempty(text: ParallelText) -> np.ndarray:
    """Which pairs have text on both sides."""
    return np.fromiter(
        (bool(s and t) for s, t in zip(text.src, text.tgt, strict=True)),
        dtype=bool,
        count=len(text),
    )


def _vocabulary(
    cfg: dict[str, Any], corpus: Corpus, split: str, vocab_dir: Path, root: Path
) -> Vocabulary:
    """The cached SentencePiece model for this training split and settings, trained if absent.

    It trains on the non-empty pairs, or a seeded sample of `spm_max_sentences / 2` of them:
    one pass over the split finds them (and keeps them while they fit the sample size), a
    second pass, only when there are more, collects the sample.
    """
    model = vocab_dir / "spm.model"
    with locked(root, vocab_dir.name):
        if model.is_file():
            log.info("reusing vocabulary %s", model)
            return Vocabulary.load(model)
        limit = max(1, cfg["spm_max_sentences"] // 2)  # pairs: each gives two sentences
        masks: list[np.ndarray] = []
        spm_pairs, too_many = ParallelText([], []), False  # every non-empty pair, while they fit
        for text in corpus.chunks(split, PREPARE_CHUNK_PAIRS):
            mask = _nonempty(text)
            masks.append(mask)
            if not too_many:
                spm_pairs.src.extend(s for s, m in zip(text.src, mask, strict=True) if m)
                spm_pairs.tgt.extend(t for t, m in zip(text.tgt, mask, strict=True) if m)
                if len(spm_pairs) > limit:
                    spm_pairs, too_many = ParallelText([], []), True
        nonempty = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
        if not nonempty.any():
            raise DataError(
                f"the training split {split!r} is empty after filtering: all {len(nonempty)} "
                f"pairs have an empty side"
            )
        if too_many:
            rng = np.random.default_rng(SPM_SAMPLE_SEED)
            idx = np.sort(rng.choice(np.flatnonzero(nonempty), size=limit, replace=False))
            log.info("training SentencePiece on a sample of %d of %d pairs", limit, nonempty.sum())
            spm_pairs = _gather(corpus.chunks(split, PREPARE_CHUNK_PAIRS), idx)
        sentences = spm_pairs.src + spm_pairs.tgt
        start = time.perf_counter()
        with atomic_dir(vocab_dir, root) as tmp:
            train_vocabulary(
                sentences,
                tmp / "spm.model",
                vocab_size=cfg["vocab_size"],
                model_type=cfg["spm_model_type"],
                character_coverage=cfg["spm_character_coverage"],
            )
        log.info(
            "trained SentencePiece (%s, %d pieces) in %.1f s",
            cfg["spm_model_type"],
            cfg["vocab_size"],
            time.perf_counter() - start,
        )
        return Vocabulary.load(model)


def _gather(chunks: Iterator[ParallelText], idx: np.ndarray) -> ParallelText:
    """The pairs at the sorted positions `idx` of a split read in chunks."""
    out, offset = ParallelText([], []), 0
    for text in chunks:
        lo, hi = np.searchsorted(idx, [offset, offset + len(text)])
        for i in idx[lo:hi] - offset:
            out.src.append(text.src[i])
            out.tgt.append(text.tgt[i])
        offset += len(text)
    return out


def _encode(vocab: Vocabulary, texts: list[str], append: int | None = None) -> RaggedIds:
    """Encode into int32 arrays (SentencePiece's lists of Python ints last one chunk)."""
    return RaggedIds.from_lists(vocab.encode_batch(texts), append=append)


def _filter(
    slen: np.ndarray, tlen: np.ndarray, nonempty: np.ndarray, max_len: int, max_ratio: float
) -> tuple[np.ndarray, dict[str, int]]:
    """Keep mask of training pairs and counts per reason (each pair counted under its first)."""
    too_long = nonempty & ((slen > max_len) | (tlen > max_len))
    ratio = np.maximum(slen, tlen) / np.maximum(np.minimum(slen, tlen), 1)
    bad_ratio = nonempty & ~too_long & (ratio > max_ratio)
    keep = nonempty & ~too_long & ~bad_ratio
    counts = {
        "read": len(slen),
        "empty": int((~nonempty).sum()),
        "too_long": int(too_long.sum()),
        "ratio": int(bad_ratio.sum()),
        "kept": int(keep.sum()),
    }
    return keep, counts


def _hash(**items: Any) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()
