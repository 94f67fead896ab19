"""Encoded splits in memory and on disk: ragged id arrays as flat .npy files plus offsets.

A split of N sentences is stored as one flat int32 array of all ids and an int64 array of
N + 1 offsets, memory-mapped on load, so a corpus larger than memory costs nothing until
its batches are read.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import BinaryIO, overload

import numpy as np

from nmt.data.vocab import EOS, Vocabulary


class RaggedIds(Sequence[np.ndarray]):
    """A read-only list of int32 id arrays backed by one flat array and offsets."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat = flat
        self.offsets = offsets

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]], append: int | None = None) -> RaggedIds:
        """Pack id lists, optionally appending one id (EOS) to each."""
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        ends = np.cumsum(lengths)
        flat = np.fromiter(
            chain.from_iterable(seqs), dtype=np.int32, count=int(ends[-1]) if len(ends) else 0
        )
        if append is not None:
            flat = np.insert(flat, ends, append).astype(np.int32, copy=False)
            lengths = lengths + 1
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(flat, offsets)

    @property
    def lengths(self) -> np.ndarray:
        """Length of every sequence (int64)."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> list[np.ndarray]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} sequences")
        i %= n
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.flat[self.offsets[i] : self.offsets[i + 1]]

    def select(self, keep: np.ndarray) -> RaggedIds:
        """The sequences where the boolean mask `keep` is True, packed anew (vectorised)."""
        lengths = self.lengths
        flat = np.asarray(self.flat)[np.repeat(keep, lengths)]
        offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=offsets[1:])
        return RaggedIds(flat, offsets)

    @classmethod
    def concat(cls, parts: Sequence[RaggedIds]) -> RaggedIds:
        """One RaggedIds of all sequences of `parts`, in order."""
        if not parts:
            return cls(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
        flat = np.concatenate([np.asarray(p.flat) for p in parts])
        lengths = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(flat.astype(np.int32, copy=False), offsets)

    def save(self, directory: Path, stem: str) -> None:
        """Write `<stem>.ids.npy` and `<stem>.offsets.npy` into `directory`."""
        np.save(directory / f"{stem}.ids.npy", self.flat)
        np.save(directory / f"{stem}.offsets.npy", self.offsets)

    @classmethod
    def load(cls, directory: Path, stem: str) -> RaggedIds:
        """Memory-map what `save` wrote."""
        flat = np.load(directory / f"{stem}.ids.npy", mmap_mode="r")
        offsets = np.load(directory / f"{stem}.offsets.npy")
        return cls(flat, offsets)


class RaggedIdsWriter:
    """Writes the files of `RaggedIds.save` from sequences given part by part, holding only
    their lengths in memory. A context manager: on an error the part file is closed, and
    the caller's temporary directory removes it."""

    def __init__(self, directory: Path, stem: str) -> None:
        self.directory, self.stem = directory, stem
        self._part = directory / f"{stem}.ids.part"
        self._file: BinaryIO | None = open(self._part, "wb")
        self._lengths: list[np.ndarray] = []

    def __enter__(self) -> RaggedIdsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:  # not closed: an error came first
            self._file.close()
            self._file = None

    def append(self, ids: RaggedIds) -> None:
        """Add the sequences of `ids` after those written so far."""
        assert self._file is not None, "append after close"
        self._file.write(np.ascontiguousarray(ids.flat, dtype=np.int32).tobytes())
        self._lengths.append(ids.lengths)

    def close(self) -> np.ndarray:
        """Write `<stem>.ids.npy` and `<stem>.offsets.npy`; returns every sequence's length."""
        assert self._file is not None, "closed twice"
        self._file.close()
        self._file = None
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # The .npy header that np.save would write for this array, then the ids as they are.
        header = np.lib.format.header_data_from_array_1_0(np.zeros(0, dtype=np.int32))
        header["shape"] = (int(offsets[-1]),)
        with (
            open(self.directory / f"{self.stem}.ids.npy", "wb") as out,
            open(self._part, "rb") as part,
        ):
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(part, out)
        self._part.unlink()
        np.save(self.directory / f"{self.stem}.offsets.npy", offsets)
        return lengths


class EncodedSplit:
    """One split as ids: `src` ends with EOS, `tgt` has neither BOS nor EOS; plus the raw text."""

    def __init__(
        self,
        name: str,
        src: Sequence[np.ndarray],
        tgt: Sequence[np.ndarray],
        src_text: Sequence[str] | None = None,
        tgt_text: Sequence[str] | None = None,
        text_files: tuple[Path, Path] | None = None,
    ) -> None:
        if len(src) != len(tgt):
            raise ValueError(f"split {name}: {len(src)} sources but {len(tgt)} targets")
        self.name = name
        self.src = src
        self.tgt = tgt
        self._text: list[Sequence[str] | None] = [src_text, tgt_text]
        self._text_files = text_files  # read on first use: the training text is rarely needed

    @classmethod
    def from_texts(
        cls,
        vocab: Vocabulary,
        src_text: Sequence[str],
        tgt_text: Sequence[str] | None = None,
        name: str = "input",
    ) -> EncodedSplit:
        """Encode raw sentences (e.g. input to translate); without targets, `tgt` is empty."""
        src = RaggedIds.from_lists(vocab.encode_batch(list(src_text)), append=EOS)
        if tgt_text is None:
            tgt = RaggedIds.from_lists([[] for _ in src_text])
        else:
            tgt = RaggedIds.from_lists(vocab.encode_batch(list(tgt_text)))
        return cls(name, src, tgt, list(src_text), None if tgt_text is None else list(tgt_text))

    def __len__(self) -> int:
        return len(self.src)

    def __repr__(self) -> str:
        return f"EncodedSplit({self.name!r}, pairs={len(self)})"

    def _get_text(self, side: int) -> Sequence[str]:
        if self._text[side] is None:
            if self._text_files is None:
                raise AttributeError(f"split {self.name} has no raw text")
            self._text[side] = read_text(self._text_files[side], len(self))
        return self._text[side]  # type: ignore[return-value]

    @property
    def src_text(self) -> Sequence[str]:
        """Raw source sentences."""
        return self._get_text(0)

    @property
    def tgt_text(self) -> Sequence[str]:
        """Raw target sentences (the BLEU references)."""
        return self._get_text(1)

    @property
    def src_lens(self) -> np.ndarray:
        """Source lengths including EOS."""
        return _lengths(self.src)

    @property
    def tgt_lens(self) -> np.ndarray:
        """Target lengths without BOS/EOS."""
        return _lengths(self.tgt)


def _lengths(seqs: Sequence[np.ndarray]) -> np.ndarray:
    if isinstance(seqs, RaggedIds):
        return seqs.lengths
    return np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))


def write_text(path: Path, lines: Sequence[str], append: bool = False) -> None:
    """One sentence per line (sentences never contain a newline: the readers split on it)."""
    with open(path, "a" if append else "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line)
            f.write("\n")


def read_text(path: Path, count: int) -> list[str]:
    """The first `count` lines written by `write_text`."""
    # Not read_text(): universal newlines would split at a "\r" inside a sentence.
    return path.read_bytes().decode("utf-8").split("\n")[:count]
