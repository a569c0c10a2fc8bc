"""Every durable file operation shoal makes, written once, and observable.

The write-ahead log, segment files, manifests and the payload store's commits all go through
these functions: appending to a file, fsync, replacing a file atomically (temp, fsync, rename,
fsync of the directory), unlinking, truncating. Each first reports itself to a hook
(``set_hook``), which is None in normal use. Tests install one to fail the N-th operation
with EIO or ENOSPC (fault injection) or to record the sequence of operations and rebuild the
directory as a power loss could leave it (``tests/storage``).

Events passed to the hook: ``(op, path, info)`` where ``op`` is one of ``write`` (info:
``offset``, ``data``), ``fsync``, ``truncate`` (``size``), ``create`` (a new empty file),
``rename`` (``dst``), ``unlink``, ``fsync_dir``, ``mkdir``, ``rmtree``, ``sqlite_commit`` (before
a commit of the payload store) and ``sqlite_committed`` (after it; ``durable``: whether it was a
``synchronous=FULL`` commit, which SQLite syncs).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

Hook = Callable[[str, str, dict], None]
_hook: Hook | None = None


def set_hook(hook: Hook | None) -> Hook | None:
    """Install ``hook`` (None removes it); returns the previous one."""
    global _hook
    previous, _hook = _hook, hook
    return previous


def event(op: str, path: str, **info: Any) -> None:
    """Report an operation about to happen (the hook may raise ``OSError`` to fail it)."""
    if _hook is not None:
        _hook(op, os.path.abspath(path), info)


#: A write longer than this is written in pieces of this size, each synced before the next:
#: the page cache then never holds much of it unwritten. Otherwise the file system may make a
#: small fsync elsewhere (the log's, on the writer's thread) wait for all of it (measured on
#: ext4: 0.5 s for a 512 MB write beside 0.4 MB log appends; 70 ms at most in 16 MB pieces).
SYNC_PIECE = 16 << 20


def write(f: BinaryIO, data: bytes | memoryview) -> None:
    """Write ``data`` at the file's position (Python's buffer is flushed to the OS too, so
    that a failure surfaces here); a long one in synced pieces of ``SYNC_PIECE`` bytes."""
    view = memoryview(data).cast("B")
    for lo in range(0, max(view.nbytes, 1), SYNC_PIECE):
        piece = view[lo:lo + SYNC_PIECE]
        if lo:
            fsync(f)
        event("write", f.name, offset=f.tell(), data=bytes(piece) if _hook is not None else b"")
        f.write(piece)
        f.flush()


def fsync(f: BinaryIO) -> None:
    event("fsync", f.name)
    f.flush()
    os.fsync(f.fileno())


def truncate(f: BinaryIO, size: int) -> None:
    event("truncate", f.name, size=size)
    f.truncate(size)


def fsync_directory(path: str) -> None:
    """fsync a directory so that files created, renamed or unlinked in it stay so after a
    power loss."""
    event("fsync_dir", path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename(src: str, dst: str) -> None:
    event("rename", src, dst=os.path.abspath(dst))
    os.replace(src, dst)


def unlink(path: str) -> None:
    event("unlink", path)
    os.unlink(path)


def makedirs(path: str) -> None:
    event("mkdir", path)
    os.makedirs(path)


def rmtree(path: str) -> None:
    event("rmtree", path)
    shutil.rmtree(path)


def sqlite_commit(path: str) -> None:
    """Called just before the payload store commits a transaction (SQLite does its own I/O;
    this lets a test fail the commit as a disk error would)."""
    event("sqlite_commit", path)


def sqlite_committed(path: str, durable: bool) -> None:
    """Called just after the payload store committed (a power-loss test copies SQLite's files
    here: after a power loss SQLite holds some prefix of its commits, at least through the
    last durable one)."""
    event("sqlite_committed", path, durable=durable)


def replace_atomically(path: str, chunks: Iterable[bytes | memoryview]) -> None:
    """Replace ``path`` with the concatenation of ``chunks``: temp file, fsync, rename over
    ``path``, fsync of the directory. After a crash ``path`` holds the old or the new bytes.
    The temp file is removed if anything fails before the rename."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        event("create", tmp)
        with open(tmp, "wb") as f:
            for chunk in chunks:
                write(f, chunk)
            fsync(f)
        rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(directory)
