"""The joint SentencePiece vocabulary: training, loading, encoding and decoding.

Every vocabulary has the same four special ids, so models, search and checkpoints can use
the constants below without asking the vocabulary:

    PAD = 0 (<pad>)   UNK = 1 (<unk>)   BOS = 2 (<s>)   EOS = 3 (</s>)

Byte fallback is always on: a character that is not in the vocabulary becomes its UTF-8
bytes (pieces <0x00>..<0xFF>) instead of <unk>, so nothing is lost on unseen scripts.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from nmt.data.errors import DataError
from nmt.special_ids import BOS, EOS, PAD, SPECIAL_PIECES, UNK

N_BYTE_PIECES = 256
MODEL_TYPES = ("unigram", "bpe")


class Vocabulary:
    """A SentencePiece model with nmt's fixed special ids."""

    def __init__(self, path: str | os.PathLike | None, proto: bytes | None = None) -> None:
        self.path = None if path is None else Path(path)  # None: built from bytes (a checkpoint)
        if proto is None:
            if self.path is None:
                raise ValueError("Vocabulary needs a path or the model bytes")
            proto = self.path.read_bytes()
        self._proto = proto
        where = self.path or "vocabulary"
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=proto)
        except RuntimeError as exc:
            raise DataError(f"{where}: not a SentencePiece model ({exc})") from None
        ids = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if ids != (PAD, UNK, BOS, EOS):
            raise DataError(
                f"{where}: special ids pad/unk/bos/eos are {ids}, nmt needs "
                f"{(PAD, UNK, BOS, EOS)}; train the vocabulary with nmt.data (train_vocabulary)"
            )
        # A content hash: a checkpoint stores it to check it is decoded with its own vocabulary.
        self.fingerprint = hashlib.sha256(proto).hexdigest()[:16]
        self.size = self._sp.vocab_size()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Load a SentencePiece .model file trained by `train_vocabulary`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"vocabulary file {path} not found")
        return cls(path)

    @classmethod
    def from_bytes(cls, model: bytes, path: str | os.PathLike | None = None) -> Vocabulary:
        """A vocabulary from the bytes of a .model file (as stored in a checkpoint)."""
        return cls(path, bytes(model))

    @property
    def model_bytes(self) -> bytes:
        """The serialized SentencePiece model (what `from_bytes` takes)."""
        return self._proto

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"Vocabulary({str(self.path)!r}, size={self.size}, fingerprint={self.fingerprint})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other._proto == self._proto

    __hash__ = None  # type: ignore[assignment]

    # The processor is a C++ object: pickle the model bytes instead (DataLoader workers, spawn).
    def __getstate__(self) -> dict:
        return {"path": self.path, "proto": self._proto}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["proto"])  # type: ignore[misc]

    def encode(self, text: str) -> list[int]:
        """Subword ids of one sentence, without BOS or EOS."""
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Subword ids of many sentences (multi-threaded in SentencePiece), without BOS/EOS."""
        return self._sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenised text: stops at the first EOS, skips PAD and BOS."""
        out: list[int] = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(i)
        return self._sp.decode(out)

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        """`decode` for each sequence of ids."""
        return [self.decode(ids) for ids in batch]

    def piece(self, i: int) -> str:
        """The subword string of one id."""
        return self._sp.id_to_piece(int(i))

    def uncovered_mask(self) -> np.ndarray:
        """Boolean array over ids: True for <unk> and byte-fallback pieces (text it lacks)."""
        return np.array(
            [self._sp.is_unknown(i) or self._sp.is_byte(i) for i in range(self.size)], dtype=bool
        )


def train_vocabulary(
    sentences: Iterable[str],
    path: str | os.PathLike,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    num_threads: int | None = None,
) -> Vocabulary:
    """Train a joint SentencePiece model on `sentences` and write it to `path` (a .model file)."""
    if model_type not in MODEL_TYPES:
        raise DataError(f"data.spm_model_type={model_type!r} is unknown; choose unigram or bpe")
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=True,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            pad_piece=SPECIAL_PIECES[PAD],
            unk_piece=SPECIAL_PIECES[UNK],
            bos_piece=SPECIAL_PIECES[BOS],
            eos_piece=SPECIAL_PIECES[EOS],
            input_sentence_size=0,  # the caller samples; SentencePiece's own sampling is unseeded
            num_threads=num_threads or min(os.cpu_count() or 1, 16),
            minloglevel=2,  # its per-iteration INFO lines would drown our log
        )
    except RuntimeError as exc:
        raise _vocab_size_error(exc, vocab_size) from None
    path = Path(path)
    path.write_bytes(writer.getvalue())
    return Vocabulary(path)


def _vocab_size_error(exc: RuntimeError, vocab_size: int) -> DataError:
    """Turn SentencePiece's vocabulary-size assertions into a message about data.vocab_size."""
    msg = str(exc)
    too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
    if too_small:
        need = int(too_small.group(2))
        chars = need - len(SPECIAL_PIECES) - N_BYTE_PIECES
        return DataError(
            f"data.vocab_size={vocab_size} is too small for this corpus: the 4 special ids, "
            f"{N_BYTE_PIECES} byte-fallback pieces and its {chars} characters need {need}; "
            f"set data.vocab_size>={need} (or lower data.spm_character_coverage)"
        )
    too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", msg)
    if too_high:
        most = int(too_high.group(2))
        return DataError(
            f"data.vocab_size={vocab_size} is too large for this training set: SentencePiece "
            f"can build at most {most} pieces from it; set data.vocab_size={most} or lower"
        )
    return DataError(f"SentencePiece training failed: {msg}")
