"""Text files in and out: gz-aware reading, and atomic writing with ordinary permissions.

Reading decompresses any file whose name ends in .gz. Only "\\n" ends a line: str.splitlines
would also split at U+2028, U+0085, ..., which occur inside real sentences and would shift
every later line of a parallel corpus or of a translation. Writing goes through a temporary
file and a rename, so a reader (or a crash) sees the old file or the new one, never half.
"""

from __future__ import annotations

import functools
import gzip
import os
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from nmt.errors import DataError, TranslateError


@functools.cache  # os.umask can only be read by setting it: once per process, not per write
def new_file_mode() -> int:
    """What open() would give a new file (0o666 less the umask); mkstemp's files are 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def open_binary(path: Path) -> BinaryIO:
    """A file opened for reading bytes, decompressed if its name ends in .gz."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed if its name ends in .gz (OSError, EOFError, zlib.error)."""
    with open_binary(path) as f:
        return f.read()


def iter_lines(path: Path) -> Iterator[str]:
    """The stripped lines of a UTF-8 text file (gzipped if it ends in .gz); DataError if invalid.

    One line at a time: the file is never held in memory whole.
    """
    # Binary line iteration splits at "\n" only. A UTF-8 sequence never contains the byte
    # 0x0a, so decoding line by line is exact.
    try:
        with open_binary(path) as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{path}, line {number}: invalid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                        f"column {exc.start + 1}); convert the file to UTF-8 "
                        f"(e.g. iconv -f latin1 -t utf-8)"
                    ) from None
                if number == 1:
                    line = line.removeprefix("\ufeff")
                    if not line:  # a file holding only a byte-order mark has no lines
                        return
                yield line.strip()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def read_lines(path: str | None) -> list[str]:
    """Lines of a UTF-8 file, gzipped when its name ends in .gz (or stdin for None / "-"),
    without their line ends."""
    stdin = path in (None, "-")
    where = "standard input" if stdin else str(path)
    try:
        data = sys.stdin.buffer.read() if stdin else read_bytes(Path(path))  # type: ignore[arg-type]
    except (FileNotFoundError, IsADirectoryError):
        raise TranslateError(f"input file {path} does not exist") from None
    except (OSError, EOFError, zlib.error) as err:
        problem = "is not a complete gzip file" if where.endswith(".gz") else "cannot be read"
        raise TranslateError(f"{where} {problem} ({err})") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TranslateError(
            f"{where} is not UTF-8 (line {line}: {err.reason}); convert it first, e.g. with iconv"
        ) from None
    lines = text.split("\n")  # "\n" only, as in iter_lines
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def one_line(text: str) -> str:
    """Text with line breaks made spaces, so one output stays one line of a file."""
    return " ".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def write_text_atomic(path: str | Path, lines: Iterable[str]) -> None:
    """Write lines to `path` via a temporary file and a rename: no half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
