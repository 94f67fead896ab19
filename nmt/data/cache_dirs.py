"""The cache's work in progress: entry locks, entries built under tmp/ and renamed into place,
entries deleted by renaming them away, and the removal of what a killed process leaves in tmp/.

A directory under tmp/ is named after its entry and its owner:

    <entry>.<pid>.<rand>@<host>     an entry being built (`atomic_dir`)
    <entry>.<pid>.<rand>            the same, written before the host was in the name
    <entry>.trash.<rand>            an entry being deleted (`remove_entry`)

A process killed while building or deleting leaves its directory behind; `remove_stale`
removes those whose owner is gone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger("nmt.data")

_BUILD_RE = re.compile(
    r"^(?P<entry>.+)\.(?P<pid>\d+)\.(?P<rand>[0-9a-f]{8})(?:@(?P<host>[A-Za-z0-9_-]+))?$"
)
_TRASH_RE = re.compile(r"^(?P<entry>.+)\.trash\.[0-9a-f]{8}$")


def host_tag() -> str:
    """This machine's name as it appears in tmp/ names (letters, digits, - and _ only)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "unknown"


@contextmanager
def locked(root: Path, name: str) -> Iterator[None]:
    """Hold the lock of one cache entry; say so when another process holds it."""
    (root / "locks").mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / "locks" / f"{name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is preparing %s; waiting for it", name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def atomic_dir(final: Path, root: Path) -> Iterator[Path]:
    """A fresh directory under root/tmp that becomes `final` by one rename, or vanishes on error."""
    rand = uuid.uuid4().hex[:8]
    tmp = root / "tmp" / f"{final.name}.{os.getpid()}.{rand}@{host_tag()}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_entry(entry: Path, root: Path) -> None:
    """Delete a cache entry: rename it away first so no reader sees it half-deleted."""
    trash = root / "tmp" / f"{entry.name}.trash.{uuid.uuid4().hex[:8]}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    os.replace(entry, trash)
    shutil.rmtree(trash, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists under another user; anything else: assume it lives
        return True
    return True


def remove_stale(root: Path) -> list[Path]:
    """Remove the tmp/ directories of killed builds and deletions; the paths removed.

    A build named with this host is stale when its pid is gone; one of another host is never
    judged (its pid means nothing here). A name without a host, or a deletion's, is stale
    when, besides, no process anywhere holds its entry's lock: every build and deletion runs
    under that lock.
    """
    tmp_root = root / "tmp"
    try:
        names = sorted(os.listdir(tmp_root))
    except OSError:  # no tmp/ yet
        return []
    removed = []
    for name in names:
        build, trash = _BUILD_RE.match(name), _TRASH_RE.match(name)
        if build and build["host"] is not None:
            stale = build["host"] == host_tag() and not pid_alive(int(build["pid"]))
        elif build:
            stale = not pid_alive(int(build["pid"])) and _lock_free(root, build["entry"])
        elif trash:
            stale = _lock_free(root, trash["entry"])
        else:
            stale = False  # not ours: left alone
        if stale:
            shutil.rmtree(tmp_root / name, ignore_errors=True)
            log.info("removed %s, left by a killed process", tmp_root / name)
            removed.append(tmp_root / name)
    return removed


def _lock_free(root: Path, entry: str) -> bool:
    """Whether no process holds the lock of `entry` right now."""
    path = root / "locks" / f"{entry}.lock"
    if not path.exists():  # never locked on this cache: nothing can be building it
        return True
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    return True
