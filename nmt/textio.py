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

from nmt.errors import DataError, TranslateError, UserError


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
    if stdin and sys.stdin is None:  # Python sets it to None when descriptor 0 is closed
        raise TranslateError(
            "standard input is closed, so there is no text to translate; give a file with "
            "-i FILE, or pipe the text in (e.g. cat input.txt | nmt-translate CKPT)"
        )
    try:
        data = sys.stdin.buffer.read() if stdin else read_bytes(Path(path))  # type: ignore[arg-type]
    except FileNotFoundError:
        raise TranslateError(
            f"input file {path} does not exist; give the path of a UTF-8 text file, one "
            f"sentence a line (or leave -i out to read standard input)"
        ) from None
    except IsADirectoryError:
        raise TranslateError(
            f"input file {path} is a directory; give the path of a UTF-8 text file inside it, "
            f"one sentence a line"
        ) from None
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


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its closest existing ancestor (where mkdir would start)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(directory: str | Path, flag: str) -> None:
    """Refuse, before any work, a directory that outputs cannot be written into.

    A missing directory is fine (writing makes it); one that a file stands in the way of, or
    that lies in an unwritable place, is a UserError naming the flag, the path and the fix.
    """
    directory = Path(directory)
    base = nearest_existing(directory)
    if not base.is_dir():
        where = "is a file" if base == directory.absolute() else f"cannot be made: {base} is a file"
        raise UserError(f"{flag} {directory} {where}, not a directory; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {directory}: {base} is not writable (permission denied); choose a "
            f"directory you can write to"
        )


def check_output_file(path: str | Path, flag: str, example: str = "out.txt") -> None:
    """Refuse, before any work, a path that cannot become a file (see `check_output_dir`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(
            f"{flag} {path} is a directory; give a file path, e.g. {flag} {path / example}"
        )
    check_output_dir(path.parent, f"{flag} {path}: directory")


def write_error(flag: str, path: str | Path, err: OSError) -> UserError:
    """The one-line message for an output that failed to be written (nothing was replaced)."""
    reason = err.strerror or str(err)
    return UserError(f"{flag} {path} cannot be written ({reason}); choose another path")
