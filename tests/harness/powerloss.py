"""A power-loss simulator in the manner of ALICE and CrashMonkey, for shoal's own files.

``Recorder`` is a ``shoal.storage.files`` hook: it keeps a model of the directory tree under a
root (directories and files as nodes, each with what is *durable* and what is only *current*)
and applies every operation the workload makes to it:

- ``write``/``truncate`` change a file's current bytes; ``fsync`` makes them durable;
- ``create``/``rename``/``unlink``/``mkdir``/``rmtree`` change a directory's current entries;
  ``fsync_dir`` makes them durable (a rename is durable once its directory is synced);
- ``sqlite_committed``: SQLite does its own I/O, so at each commit the recorder copies the
  payload store's files. After a power loss SQLite holds a prefix of its commits, at least
  through the last durable (``synchronous=FULL``) one.

After each operation it can build the directory *as a power loss at that point could leave
it* (``crash_states``), in several variants: everything that was not synced lost (files back
to their last fsync, directory entries back to their last directory fsync, SQLite at its last
durable commit); the last unsynced write of each file torn in half; directory operations kept
but file data lost; and everything kept (what SIGKILL leaves). The test reopens each state and
compares it with the model of acknowledged writes.

``ignore`` (a predicate on events) makes the recorder treat some fsyncs as never made: the
same as deleting those fsync calls from shoal, which is how the test proves that each fsync it
relies on is needed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class File:
    data: bytearray = field(default_factory=bytearray)
    synced: bytes = b""
    pending: list = field(default_factory=list)  # ("w", offset, bytes) | ("t", size) since fsync


@dataclass
class Dir:
    now: dict = field(default_factory=dict)     # name -> File | Dir
    synced: dict = field(default_factory=dict)


VARIANTS = ("lose-unsynced", "torn-last-write", "keep-data-lose-renames", "keep-all")


class Recorder:
    def __init__(self, root: str, out: str | None = None,
                 ignore: Callable[[str, str, dict], bool] | None = None) -> None:
        """Record operations under ``root``; with ``out``, also write every crash state there
        (``crash_points`` lists them as (directory, variant, acknowledged operations))."""
        self.root = os.path.abspath(root)
        self.out = out
        self.crash_points: list[tuple[str, str, int]] = []
        self.tree = Dir()
        self.ignore = ignore or (lambda op, path, info: False)
        self.sqlite: dict[str, list[tuple[int, bool, bytes, bytes]]] = {}  # path -> (step, durable, db, wal)
        self.steps = 0
        self.durable_ops = 0  # how many of the workload's operations are acknowledged as durable
        self._lock = threading.Lock()
        self._load(self.root, self.tree)

    def _load(self, path: str, node: Dir) -> None:
        """What is on disk when recording starts counts as durable."""
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if os.path.isdir(full):
                child = Dir()
                self._load(full, child)
            else:
                with open(full, "rb") as f:
                    data = f.read()
                child = File(bytearray(data), data)
            node.now[name] = node.synced[name] = child

    # ------------------------------------------------------------------ the model
    def _parent(self, path: str) -> tuple[Dir, str]:
        rel = os.path.relpath(path, self.root)
        parts = rel.split(os.sep)
        node = self.tree
        for part in parts[:-1]:
            node = node.now[part]
        return node, parts[-1]

    def _file(self, path: str) -> File:
        parent, name = self._parent(path)
        return parent.now[name]

    def __call__(self, op: str, path: str, info: dict) -> None:
        if not path.startswith(self.root):
            return
        with self._lock:  # operations from several threads (checkpoints) apply one at a time
            self._apply(op, path, info)

    def _apply(self, op: str, path: str, info: dict) -> None:
        self.steps += 1
        if op == "sqlite_committed":
            self._copy_sqlite(path, info["durable"])
            return
        if self.out is not None:
            self._crash_point()
        if op == "sqlite_commit":
            return
        if op == "create":
            parent, name = self._parent(path)
            parent.now[name] = File()
        elif op == "write":
            f = self._file(path)
            off, data = info["offset"], info["data"]
            if len(f.data) < off:
                _resize(f.data, off)
            f.data[off:off + len(data)] = data
            f.pending.append(("w", off, data))
        elif op == "truncate":
            f = self._file(path)
            _resize(f.data, info["size"])
            f.pending.append(("t", info["size"]))
        elif op == "fsync":
            if not self.ignore(op, path, info):
                f = self._file(path)
                f.synced, f.pending = bytes(f.data), []
        elif op == "rename":
            src_parent, src_name = self._parent(path)
            dst_parent, dst_name = self._parent(info["dst"])
            dst_parent.now[dst_name] = src_parent.now.pop(src_name)
        elif op in ("unlink", "rmtree"):
            parent, name = self._parent(path)
            parent.now.pop(name, None)
        elif op == "mkdir":
            rel = os.path.relpath(path, self.root).split(os.sep)
            node = self.tree
            for part in rel:
                node = node.now.setdefault(part, Dir())
        elif op == "fsync_dir":
            if not self.ignore(op, path, info):
                node = self.tree if path == self.root else self._file(path)
                node.synced = dict(node.now)

    def _copy_sqlite(self, path: str, durable: bool) -> None:
        if self.ignore("sqlite_committed", path, {"durable": durable}):
            durable = False
        parts = []
        for suffix in ("", "-wal"):
            try:
                with open(path + suffix, "rb") as f:
                    parts.append(f.read())
            except FileNotFoundError:
                parts.append(b"")
        self.sqlite.setdefault(path, []).append((self.steps, durable, parts[0], parts[1]))

    def _crash_point(self) -> None:
        for variant in VARIANTS:
            target = os.path.join(self.out, f"{len(self.crash_points):05d}-{variant}")
            self.build(target, variant)
            self.crash_points.append((target, variant, self.durable_ops))

    def finish(self) -> None:
        """A crash after the last operation too."""
        if self.out is not None:
            self._crash_point()

    def ack(self, durable_ops: int) -> None:
        """The workload's first ``durable_ops`` operations are acknowledged as durable."""
        self.durable_ops = durable_ops

    # ------------------------------------------------------------------ crash states
    def build(self, target: str, variant: str) -> None:
        """Write the directory as a power loss now could leave it, under ``target``."""
        os.makedirs(target)
        self._build(self.tree, target, variant)
        for path, commits in self.sqlite.items():
            where = os.path.join(target, os.path.relpath(path, self.root))
            if not os.path.isdir(os.path.dirname(where)):
                continue  # its directory did not survive
            pick = commits[-1]
            if variant == "lose-unsynced" or variant == "keep-data-lose-renames":
                durable = [c for c in commits if c[1]]
                pick = durable[-1] if durable else None
            for name in (os.path.basename(where), os.path.basename(where) + "-wal",
                         os.path.basename(where) + "-shm"):
                full = os.path.join(os.path.dirname(where), name)
                if os.path.exists(full):
                    os.unlink(full)
            if pick is not None:
                with open(where, "wb") as f:
                    f.write(pick[2])
                if pick[3]:
                    with open(where + "-wal", "wb") as f:
                        f.write(pick[3])

    def _build(self, node: Dir, target: str, variant: str) -> None:
        entries = node.synced if variant in ("lose-unsynced", "keep-data-lose-renames") else node.now
        for name, child in entries.items():
            full = os.path.join(target, name)
            if isinstance(child, Dir):
                os.makedirs(full, exist_ok=True)
                self._build(child, full, variant)
                continue
            if name.startswith("payloads.sqlite"):
                continue  # SQLite's own files come from its commits (above)
            with open(full, "wb") as f:
                f.write(self._content(child, variant))

    @staticmethod
    def _content(f: File, variant: str) -> bytes:
        if variant == "lose-unsynced":
            return f.synced
        if variant in ("keep-all", "keep-data-lose-renames") or not f.pending:
            return bytes(f.data)
        data = bytearray(f.synced)  # torn-last-write: every unsynced write but the last, half of it
        for i, p in enumerate(f.pending):
            last = i == len(f.pending) - 1
            if p[0] == "t":
                _resize(data, p[1])
            else:
                _, off, chunk = p
                chunk = chunk[: len(chunk) // 2] if last else chunk
                if len(data) < off:
                    data.extend(b"\0" * (off - len(data)))
                data[off:off + len(chunk)] = chunk
        return bytes(data)


def _resize(data: bytearray, size: int) -> None:
    """Truncate or lengthen ``data`` to ``size`` bytes (zeros past its end), as ftruncate."""
    if size < len(data):
        del data[size:]
    else:
        data.extend(b"\0" * (size - len(data)))
