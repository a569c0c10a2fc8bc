"""``shoal.open``: a database directory of named collections, one writer process at a time.

Layout::

    LOCK                 held (flock) by the one process that has the database open to write
    collections/NAME/    one directory per collection (``shoal.db.collection``)

A second process opening the same directory to write gets ``LockedError`` at once; opening
with ``read_only=True`` takes no lock and sees the data as of the moment it opens.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shoal.db import contract
from shoal.db import manifest as manifest_file
from shoal.db.collection import Collection
from shoal.db.policy import DEFAULT_POLICY, Policy
from shoal.index import DEFAULT_EF_CONSTRUCTION
from shoal.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    InvalidArgumentError,
    LockedError,
    ReadOnlyError,
    StorageError,
)
from shoal.storage import files

def check_name(name: object) -> str:
    """A collection name (``shoal.db.contract.prepare_name``)."""
    return contract.prepare_name(name)


class Database:
    """A directory of collections. Use ``shoal.open(path)``; close it (or use ``with``).

    ``policy`` (a ``shoal.Policy``) sets when every collection opened here checkpoints, seals
    and compacts. ``recover=True`` opens collections whose log is damaged in the middle by
    keeping the records before the damage and moving the damaged log aside (a warning names
    it); without it such a collection raises ``CorruptIndexError``.
    """

    def __init__(self, path: str | os.PathLike, *, read_only: bool = False,
                 durability: str = "sync", policy: Policy = DEFAULT_POLICY, recover: bool = False) -> None:
        if durability not in ("sync", "batch"):
            raise InvalidArgumentError(f"durability must be 'sync' or 'batch', got {durability!r}")
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(f"policy must be a shoal.Policy, got {type(policy).__name__}")
        if recover and read_only:
            raise InvalidArgumentError("recover=True needs a database opened for writing")
        self.path = os.fspath(path)
        self.read_only = read_only
        self.durability = durability
        self.policy = policy
        self.recover = recover
        self._open: dict[str, Collection] = {}
        self._lock = threading.RLock()  # collection management from several threads (a server)
        self._lock_file = None
        if read_only:
            if not os.path.isdir(self.path):
                raise FileNotFoundError(f"no shoal database at {self.path}")
        else:
            root = os.path.join(self.path, "collections")
            if not os.path.isdir(root):
                try:
                    files.makedirs(root)
                    files.fsync_directory(self.path)
                    files.fsync_directory(os.path.dirname(os.path.abspath(self.path)))
                except OSError as exc:
                    raise StorageError(f"creating the database at {self.path} failed ({exc})") from exc
            self._lock_file = open(os.path.join(self.path, "LOCK"), "a+")
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file.close()
                raise LockedError(f"{self.path} is open for writing by another process; open it with "
                                  "read_only=True to read") from None
            self._lock_file.truncate(0)
            self._lock_file.write(str(os.getpid()))
            self._lock_file.flush()
            for entry in os.listdir(root):  # the remains of a create or a drop that crashed
                if entry.startswith("."):
                    files.rmtree(os.path.join(root, entry))

    def _dir(self, name: str) -> str:
        return os.path.join(self.path, "collections", check_name(name))

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"database {self.path} is open read-only")
        if self._lock_file is None:
            raise InvalidArgumentError("the database is closed")

    def list_collections(self) -> list[str]:
        root = os.path.join(self.path, "collections")
        if not os.path.isdir(root):
            return []
        return sorted(n for n in os.listdir(root)
                      if not n.startswith(".") and os.path.isfile(os.path.join(root, n, "manifest.json")))

    @contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Database-level writes (create, drop) are atomic by rename; an I/O error is reported
        as ``StorageError`` and leaves at most a hidden directory that the next open removes."""
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{what} failed with an I/O error ({exc})") from exc

    def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine", *, m: int = 16,
                          ef_construction: int = DEFAULT_EF_CONSTRUCTION, on_disk: bool = False,
                          embedding: Any = None) -> Collection:
        """Create an empty collection; ``CollectionExistsError`` if the name is taken. With
        ``on_disk`` its float32 vectors stay on disk, memory-mapped, and RAM holds the search
        codes and links (a third of the bytes at 384-d): for collections larger than RAM.
        ``embedding`` ("default", a callable or a LangChain ``Embeddings``; see
        ``shoal.embed``) turns documents and text queries into vectors; ``dim`` defaults to
        its dimension."""
        emb, dim = contract.prepare_embedding(embedding, dim)
        with self._lock:
            return self._create_locked(name, dim, metric, m, ef_construction, on_disk, emb)

    def _create_locked(self, name: str, dim: int, metric: str, m: int, ef_construction: int,
                       on_disk: bool = False, embedding: Any = None) -> Collection:
        self._check_writable()
        config = contract.prepare_create(name, dim, metric, m, ef_construction, on_disk, embedding)
        path = self._dir(name)
        if os.path.exists(os.path.join(path, "manifest.json")):
            raise CollectionExistsError(f"collection {name!r} already exists")
        with self._io(f"creating collection {name!r}"):
            if os.path.exists(path):  # the remains of a create from before format 2's manifest
                files.rmtree(path)
            manifest_file.create(path, config)
            return self._get_locked(name, path, embedding)

    def get_collection(self, name: str, *, embedding: Any = None) -> Collection:
        """An existing collection; ``CollectionNotFoundError`` (a ``KeyError``) if absent.
        ``embedding``: its embedding function, for one created with a function of the
        caller's (one created with "default" gets the default model by itself)."""
        path = self._dir(name)
        with self._lock:
            return self._get_locked(name, path, embedding)

    def _get_locked(self, name: str, path: str, embedding: Any = None) -> Collection:
        col = self._open.get(name)
        if col is not None and col.failed:  # an I/O error stopped it: reopening replays its log
            self._open.pop(name).close()
            col = None
        if col is None:
            if not os.path.isfile(os.path.join(path, "manifest.json")):
                raise CollectionNotFoundError(f"no collection named {name!r} (have: {self.list_collections()})")
            col = self._open[name] = Collection(path, read_only=self.read_only, durability=self.durability,
                                                policy=self.policy, recover=self.recover)
        if embedding is not None or col.embedding is None:
            col.embedding = contract.collection_embedding(col.config, embedding)
        return col

    def drop_collection(self, name: str) -> None:
        """Delete a collection and its files."""
        with self._lock:
            self._drop_locked(name)

    def _drop_locked(self, name: str) -> None:
        self._check_writable()
        path = self._dir(name)
        if not os.path.isfile(os.path.join(path, "manifest.json")):
            raise CollectionNotFoundError(f"no collection named {name!r}")
        if name in self._open:
            self._open.pop(name).close(checkpoint=False)  # its files are about to go
        doomed = os.path.join(os.path.dirname(path), f".{name}.dropping")
        with self._io(f"dropping collection {name!r}"):
            files.rename(path, doomed)
            files.fsync_directory(os.path.dirname(path))
            files.rmtree(doomed)

    def close(self) -> None:
        """Close every collection (each checkpoints) and release the writer's lock, even if
        a collection's close fails (its error is raised after the others are closed)."""
        with self._lock:
            errors = []
            for col in self._open.values():
                try:
                    col.close()
                except Exception as exc:  # noqa: BLE001 - raised below, after the rest close
                    errors.append(exc)
            self._open.clear()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None
            if errors:
                raise errors[0]

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self.path!r}, collections={self.list_collections()})"


def open_database(path: str | os.PathLike, *, read_only: bool = False, durability: str = "sync",
                  policy: Policy = DEFAULT_POLICY, recover: bool = False) -> Database:
    """Open (creating if needed) the database at ``path``; see ``Database``."""
    return Database(path, read_only=read_only, durability=durability, policy=policy, recover=recover)


__all__ = ["Database", "check_name", "open_database"]
