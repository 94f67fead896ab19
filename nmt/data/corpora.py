"""Parallel text from three sources: the built-in toy task, local files, the `datasets` hub.

Every source is opened with the three split names of the data config, checks at once that
those splits and the language pair exist (so a typo fails before any work), and then offers
`fingerprint(split)` (a content hash, for the cache key), `read(split)` (validated text) and
`chunks(split, size)` (the same text in pieces, so a WMT training split never has to fit in
memory as Python strings).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from nmt.data.errors import DataError
from nmt.textio import iter_lines

ROLES = ("train", "valid", "test")


@dataclass
class ParallelText:
    """Aligned source and target sentences of one split."""

    src: list[str]
    tgt: list[str]

    def __len__(self) -> int:
        return len(self.src)


class Corpus:
    """A source of parallel text; subclasses check splits and languages in __init__."""

    kind = "corpus"

    def fingerprint(self, split: str) -> str:
        """A hash of the split's content (both languages)."""
        raise NotImplementedError

    def read(self, split: str) -> ParallelText:
        """The split's sentence pairs, validated (encoding, alignment)."""
        raise NotImplementedError

    def chunks(self, split: str, size: int) -> Iterator[ParallelText]:
        """The split's pairs in order, `size` at a time (the last chunk may be shorter)."""
        text = self.read(split)
        for start in range(0, len(text), size):
            yield ParallelText(text.src[start : start + size], text.tgt[start : start + size])


def open_corpus(cfg: Mapping[str, Any]) -> Corpus:
    """The corpus a resolved data config names; DataError if a split or language is missing."""
    splits = {role: cfg[f"{role}_split"] for role in ROLES}
    if cfg["src"] == cfg["tgt"]:
        raise DataError(f"data.src and data.tgt are both {cfg['src']!r}; pick two languages")
    if cfg["source"] == "toy":
        return ToyCorpus(cfg["toy"], cfg["src"], cfg["tgt"], splits)
    if cfg["source"] == "local":
        if not cfg.get("root"):
            raise DataError(
                "data.source=local needs data.root=DIR, a directory of {split}.{lang}[.gz] files"
            )
        return LocalCorpus(cfg["root"], cfg["src"], cfg["tgt"], splits, name=cfg.get("name", ""))
    if cfg["source"] == "hub":
        if not cfg.get("hub_name"):
            raise DataError(
                "data.source=hub needs data.hub_name=NAME (a hub dataset or a local copy)"
            )
        return HubCorpus(cfg["hub_name"], cfg.get("hub_config"), cfg["src"], cfg["tgt"], splits)
    raise DataError(f"data.source={cfg['source']!r} is unknown; choose toy, local or hub")


# ---------------------------------------------------------------------------------------
# toy: a synthetic task that cannot be solved without word order

TOY_SPLITS = ("train", "valid", "test")
TOY_LANGS = ("src", "tgt")
TOY_VERSION = 1  # bump when the generator changes: it is part of the cache key
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def toy_words(n: int) -> list[str]:
    """The first `n` source words: consonant-vowel syllables (70), then pairs of them."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    words = syllables + [a + b for a in syllables for b in syllables]
    if n > len(words):
        raise DataError(f"data.toy.vocab={n} is too large; at most {len(words)} words")
    return words[:n]


def toy_lexicon(vocab: int, seed: int) -> dict[str, str]:
    """The word-to-word dictionary: source syllables to a seeded permutation of upper-case ones."""
    words = toy_words(vocab)
    perm = np.random.default_rng([seed, 1000]).permutation(vocab)
    return {w: words[p].upper() for w, p in zip(words, perm, strict=True)}


def toy_translate(words: Sequence[str], lexicon: Mapping[str, str], chunk: int) -> list[str]:
    """The toy rule: translate word by word, then reverse the words inside each chunk of `chunk`."""
    out = [lexicon[w] for w in words]
    return [w for i in range(0, len(out), chunk) for w in reversed(out[i : i + chunk])]


class ToyCorpus(Corpus):
    """Deterministic from `data.toy`; train/valid lengths min_len..max_len, test its own range."""

    kind = "toy"

    def __init__(self, toy: Mapping[str, Any], src: str, tgt: str, splits: Mapping[str, str]):
        self.toy = dict(toy)
        if {src, tgt} != set(TOY_LANGS):
            raise DataError(
                f"unknown language pair {src}-{tgt} for data.source=toy; its languages are "
                f"src and tgt (data.src=src data.tgt=tgt, or swapped for the inverse task)"
            )
        self.reverse = src == "tgt"
        for role, split in splits.items():
            if split not in TOY_SPLITS:
                raise DataError(
                    f"unknown split {split!r} (data.{role}_split) for data.source=toy; its "
                    f"splits are {', '.join(TOY_SPLITS)}"
                )

    def fingerprint(self, split: str) -> str:
        return _hash_items(["toy", TOY_VERSION, split, self.reverse, sorted(self.toy.items())])

    def read(self, split: str) -> ParallelText:
        t = self.toy
        lo, hi = (
            (t["test_min_len"], t["test_max_len"])
            if split == "test"
            else (t["min_len"], t["max_len"])
        )
        size = t[f"{split}_size"]
        words = toy_words(t["vocab"])
        lexicon = toy_lexicon(t["vocab"], t["seed"])
        rng = np.random.default_rng([t["seed"], TOY_SPLITS.index(split)])
        lengths = rng.integers(lo, hi + 1, size=size)
        src, tgt = [], []
        for n in lengths:
            sent = [words[i] for i in rng.integers(0, len(words), size=n)]
            src.append(" ".join(sent))
            tgt.append(" ".join(toy_translate(sent, lexicon, t["chunk"])))
        return ParallelText(tgt, src) if self.reverse else ParallelText(src, tgt)


# ---------------------------------------------------------------------------------------
# local files: {root}/{split}.{lang} or {split}.{lang}.gz, one sentence per line

_FILE_RE = re.compile(r"^(?P<split>.+)\.(?P<lang>[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,4})?)$")
# Suffixes that look like language codes but name file types (README.md, notes.txt, ...).
_NOT_LANGS = {
    "md",
    "txt",
    "py",
    "sh",
    "cfg",
    "ini",
    "csv",
    "tsv",
    "xml",
    "sgm",
    "log",
    "tar",
    "zip",
    "bz2",
    "xz",
    "yml",
    "pdf",
    "doc",
    "lock",
    "npy",
    "npz",
    "pt",
}


class LocalCorpus(Corpus):
    """Aligned text files in the WMT / Moses layout."""

    kind = "local"

    def __init__(self, root: str, src: str, tgt: str, splits: Mapping[str, str], name: str = ""):
        self.root = Path(root).expanduser()
        hint = "set data.root=DIR to the directory holding the {split}.{lang}[.gz] files"
        if name == "multi30k":
            hint = (
                "set NMT_DATA_DIR to the directory that holds multi30k/ (or data.root=DIR); "
                "scripts/download_multi30k.sh fetches the files"
            )
        if not self.root.is_dir():
            raise DataError(f"data.root={self.root} is not a directory; {hint}")
        inventory = self._inventory()
        self.files: dict[str, tuple[Path, Path]] = {}
        for role, split in splits.items():
            self.files[split] = tuple(  # type: ignore[assignment]
                self._find(role, split, lang, (src, tgt), inventory, hint) for lang in (src, tgt)
            )

    def _inventory(self) -> dict[str, set[str]]:
        """Split name -> languages of the {split}.{lang}[.gz] files in root."""
        found: dict[str, set[str]] = {}
        for path in self.root.iterdir():
            match = _FILE_RE.match(path.name.removesuffix(".gz"))
            if match and path.is_file() and match["lang"].lower() not in _NOT_LANGS:
                found.setdefault(match["split"], set()).add(match["lang"])
        return found

    def _find(self, role, split, lang, pair, inventory, hint) -> Path:
        for path in (self.root / f"{split}.{lang}", self.root / f"{split}.{lang}.gz"):
            if path.is_file():
                return path
        missing = self.root / f"{split}.{lang}[.gz]"
        if not inventory:
            raise DataError(
                f"missing file {missing}: {self.root} holds no {{split}}.{{lang}} files; {hint}"
            )
        if split not in inventory:
            raise DataError(
                f"unknown split {split!r} (data.{role}_split): no {missing}; the splits in "
                f"{self.root} are {', '.join(sorted(inventory))}"
            )
        langs = set().union(*inventory.values())
        if lang not in langs:
            raise DataError(
                f"unknown language pair {pair[0]}-{pair[1]}: no {missing}; the languages in "
                f"{self.root} are {', '.join(sorted(langs))} (set data.src / data.tgt)"
            )
        raise DataError(
            f"missing file {missing}: split {split!r} has only "
            f"{', '.join(sorted(inventory[split]))} there; add the file or set data.src / data.tgt"
        )

    def fingerprint(self, split: str) -> str:
        digest = hashlib.sha256()
        for path in self.files[split]:
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        return digest.hexdigest()

    def read(self, split: str) -> ParallelText:
        return next(self.chunks(split, sys.maxsize), ParallelText([], []))  # one chunk: all of it

    def chunks(self, split: str, size: int) -> Iterator[ParallelText]:
        # Both files are read in step; a length mismatch is found where the shorter one ends.
        src_path, tgt_path = self.files[split]
        src_lines, tgt_lines = iter_lines(src_path), iter_lines(tgt_path)
        done = 0
        while True:
            src, tgt = list(islice(src_lines, size)), list(islice(tgt_lines, size))
            if len(src) != len(tgt):
                n_src = done + len(src) + sum(1 for _ in src_lines)
                n_tgt = done + len(tgt) + sum(1 for _ in tgt_lines)
                raise DataError(
                    f"different line counts: {src_path} has {n_src} lines but {tgt_path} has "
                    f"{n_tgt}; the two sides of a parallel corpus must align line by line"
                )
            if not src:
                return
            done += len(src)
            yield ParallelText(src, tgt)


# ---------------------------------------------------------------------------------------
# the datasets hub (or a local copy of a hub dataset)


def load_hub_dataset(name: str, subset: str | None) -> Any:
    """A DatasetDict: a save_to_disk directory, a directory of data files, or a hub name."""
    import datasets  # slow to import; only this source needs it

    path = Path(name).expanduser()
    try:
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        if path.is_dir() and (path / "state.json").is_file():
            raise DataError(
                f"data.hub_name={name} is a single saved split; save a DatasetDict with "
                f"train / validation / test splits (DatasetDict.save_to_disk)"
            )
        if path.is_dir():
            # A plain directory of parquet/json/csv files; a subset may be a subdirectory
            # (the hub's own layout, e.g. de-en/train-*.parquet).
            if subset and (path / subset).is_dir() and not (path / "README.md").is_file():
                return datasets.load_dataset(str(path / subset))
            return datasets.load_dataset(str(path), subset)
        return datasets.load_dataset(name, subset)
    except DataError:
        raise
    except Exception as exc:  # the hub raises many types (network, missing config, ...)
        raise DataError(
            f"cannot load dataset data.hub_name={name!r} data.hub_config={subset!r}: "
            f"{type(exc).__name__}: {exc}. Without internet, point data.hub_name at a local "
            f"copy (a save_to_disk directory or a directory of parquet files)"
        ) from None


def _dataset_languages(features: Any) -> tuple[str | None, list[str]]:
    """(column holding the pairs or None for one column per language, languages available)."""
    if "translation" in features:
        feat = features["translation"]
        langs = getattr(feat, "languages", None) or (list(feat) if isinstance(feat, dict) else [])
        return "translation", sorted(langs)
    return None, sorted(features)


class HubCorpus(Corpus):
    """A translation dataset with a `translation` column ({lang: text}) or a column a language."""

    kind = "hub"

    def __init__(
        self, name: str, subset: str | None, src: str, tgt: str, splits: Mapping[str, str]
    ):
        self.name, self.subset, self.src, self.tgt = name, subset, src, tgt
        self.dataset = load_hub_dataset(name, subset)
        self._tables: dict[str, Any] = {}
        where = f"{name}" + (f" ({subset})" if subset else "")
        for role, split in splits.items():
            if split not in self.dataset:
                raise DataError(
                    f"unknown split {split!r} (data.{role}_split) in {where}; it has "
                    f"{', '.join(sorted(self.dataset))}"
                )
            column, langs = _dataset_languages(self.dataset[split].features)
            if src not in langs or tgt not in langs:
                raise DataError(
                    f"unknown language pair {src}-{tgt} in {where} split {split!r}; it has "
                    f"{', '.join(langs)} (set data.src / data.tgt)"
                )
            self.column = column

    def fingerprint(self, split: str) -> str:
        # The datasets library's own fingerprint: a content hash of hub files, the saved
        # state for save_to_disk copies.
        ds = self.dataset[split]
        return _hash_items([self.name, self.subset, split, ds._fingerprint, len(ds)])

    def read(self, split: str) -> ParallelText:
        return self._pairs(self._table(split))

    def chunks(self, split: str, size: int) -> Iterator[ParallelText]:
        table = self._table(split)  # memory-mapped Arrow: a slice costs nothing until read
        for start in range(0, table.num_rows, size):
            yield self._pairs(table.slice(start, size))

    def _table(self, split: str) -> Any:
        if split not in self._tables:  # preparing reads the training split up to three times
            ds = self.dataset[split]
            if ds._indices is not None:  # a select()/shuffle() view: make the rows contiguous
                ds = ds.flatten_indices()
            self._tables[split] = ds.data
        return self._tables[split]

    def _pairs(self, table: Any) -> ParallelText:
        import pyarrow.compute as pc

        sides = []
        for lang in (self.src, self.tgt):
            col = (
                table.column(lang)
                if self.column is None
                else pc.struct_field(table.column(self.column), lang)
            )
            sides.append([_one_line(s) for s in col.to_pylist()])
        return ParallelText(*sides)


def _one_line(text: str | None) -> str:
    """A hub sentence as one stripped line (a newline inside would break the cache files)."""
    if text is None:
        return ""
    return " ".join(text.splitlines()).strip() if "\n" in text or "\r" in text else text.strip()


def _hash_items(items: list[Any]) -> str:
    return hashlib.sha256(repr(items).encode()).hexdigest()
