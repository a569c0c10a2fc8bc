"""The payload store: user keys, internal point numbers and JSON payloads in SQLite.

One table ``points(uid INTEGER PRIMARY KEY, key UNIQUE, payload TEXT)``:

- ``key`` is the user's id, an int64 or a string (a UUID is a string). The column has no type
  affinity, so ``1`` and ``"1"`` are different keys.
- ``uid`` is the point number the vector segments use (an int64 that is never reused): an
  upsert of an existing key gives it a new uid and reports the old one, so that the segment
  holding the old vector can mark it deleted.
- ``payload`` is a JSON object (``{}`` when none was given).

The database runs in SQLite's WAL mode. Durability of acknowledged writes is the write-ahead
log's job (``shoal.storage.wal``): after a crash the collection replays its log into this
store, and every operation here is idempotent under replay.
"""

from __future__ import annotations

import json
import math
import numbers
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from shoal.db.filters import compile_filter, json_path
from shoal.errors import InvalidArgumentError, InvalidTypeError

Key = int | str
_CHUNK = 500  # SQLite's limit on bound parameters is 32766; stay well below it


def check_keys(keys: Any, name: str = "ids") -> list[Key]:
    """User keys as a list of Python ints (int64) and strings, or raise naming the bad one."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, (Sequence, np.ndarray)):
        raise InvalidTypeError(f"{name} must be a list of ints or strings, got {type(keys).__name__}")
    out: list[Key] = []
    for i, key in enumerate(keys.tolist() if isinstance(keys, np.ndarray) else keys):
        if type(key) is int and -(2**63) <= key < 2**63:  # the common case, quickly
            out.append(key)
            continue
        if isinstance(key, bool) or not isinstance(key, (numbers.Integral, str)):
            raise InvalidTypeError(f"{name}[{i}] must be an int or a string, got {type(key).__name__}")
        if isinstance(key, str):
            if not key:
                raise InvalidArgumentError(f"{name}[{i}] is an empty string")
            out.append(key)
        else:
            if not -(2**63) <= int(key) < 2**63:
                raise InvalidArgumentError(f"{name}[{i}] = {key} does not fit in int64")
            out.append(int(key))
    seen: set[tuple[type, Key]] = set()
    dup = [k for k in out if (type(k), k) in seen or seen.add((type(k), k))]
    if dup:
        raise InvalidArgumentError(f"{name} are repeated: {dup[:10]}")
    return out


def _finite(value: Any, where: str) -> None:
    """Raise naming the first non-finite number or non-string object key in ``value`` (for
    messages; ``encode_payloads`` only calls it once ``json.dumps`` refused or the keys are
    suspect)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(f"{where}: numbers must be finite, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidTypeError(f"{where}: object keys must be strings, got {k!r}")
            _finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")


def _string_keys(value: dict) -> bool:
    """Whether every object key in ``value``, nested ones included, is a string (json.dumps
    would turn an int key into a string silently)."""
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if type(v) is dict:
            for k, x in v.items():
                if type(k) is not str:
                    return False
                if type(x) is dict or type(x) is list:
                    stack.append(x)
        elif type(v) is list:
            stack.extend(x for x in v if type(x) is dict or type(x) is list)
        elif isinstance(v, dict):  # dict subclasses: the slow path checks them
            return False
    return True


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
dumps = _ENCODER.encode


def encode_payloads(payloads: Any, n: int) -> list[str]:
    """JSON texts of ``n`` payloads (dicts or None), or raise naming the bad one."""
    if payloads is None:
        return ["{}"] * n
    if isinstance(payloads, (str, bytes, dict)) or not isinstance(payloads, Sequence):
        raise InvalidTypeError(f"payloads must be a list of JSON objects, got {type(payloads).__name__}")
    if len(payloads) != n:
        raise InvalidArgumentError(f"payloads has {len(payloads)} entries but there are {n} ids")
    out = []
    for i, p in enumerate(payloads):
        if p is None:
            out.append("{}")
            continue
        if not isinstance(p, dict):
            raise InvalidTypeError(f"payloads[{i}] must be a JSON object (dict) or None, got {type(p).__name__}")
        try:
            if _string_keys(p):
                out.append(dumps(p))
                continue
        except (TypeError, ValueError):
            pass
        _finite(p, f"payloads[{i}]")  # names a NaN or a non-string key, if that is the fault
        try:
            out.append(dumps(p))
        except (TypeError, ValueError) as exc:
            raise InvalidTypeError(f"payloads[{i}] is not JSON: {exc}") from None
    return out


class PayloadStore:
    """Keys, uids and payloads of one collection, in the SQLite file ``path``."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self._read_uri = f"file:{path}?mode=ro"
        uri = self._read_uri if read_only else f"file:{path}?mode=rwc"
        # Writes (and the reads they depend on) use this connection, under the caller's writer
        # lock; every other thread reads through a connection of its own (SQLite's WAL mode
        # lets readers run beside a writer, each seeing committed transactions only).
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        if not read_only:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS points "
                             "(uid INTEGER PRIMARY KEY, key UNIQUE NOT NULL, payload TEXT NOT NULL)")
            # Payload indexes: one row per scalar value (array elements included) of each
            # indexed field, kept in the same transactions as ``points``.
            self._db.execute("CREATE TABLE IF NOT EXISTS indexed_fields (field TEXT PRIMARY KEY)")
            self._db.execute("CREATE TABLE IF NOT EXISTS field_index "
                             "(field TEXT NOT NULL, type TEXT NOT NULL, value, uid INTEGER NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS field_index_value ON field_index (field, type, value)")
            self._db.execute("CREATE INDEX IF NOT EXISTS field_index_uid ON field_index (uid)")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        try:
            self.indexed = frozenset(f for (f,) in self._db.execute("SELECT field FROM indexed_fields"))
        except sqlite3.OperationalError:  # a read-only store from before payload indexes
            self.indexed = frozenset()

    def create_index(self, field: str) -> None:
        """Index the payload values at dotted path ``field`` (filters on it then read the
        index instead of every payload). Idempotent."""
        if not isinstance(field, str):
            raise InvalidTypeError(f"field must be a string, got {type(field).__name__}")
        json_path(field, "field")
        if field in self.indexed:
            return
        with self._transaction():
            self._db.execute("INSERT INTO indexed_fields VALUES (?)", (field,))
            self._index_rows([field], None)
        self.indexed = self.indexed | {field}

    def _index_rows(self, fields, uids: list[int] | None) -> None:
        """Add the field_index rows of ``fields`` for ``uids`` (all points when None)."""
        for field in fields:
            path = json_path(field, "field")
            only, extra = ("", []) if uids is None else (f" AND uid IN ({','.join('?' * len(uids))})", list(uids))
            self._db.execute(
                "INSERT INTO field_index SELECT ?, json_type(payload, ?), json_extract(payload, ?), uid "
                f"FROM points WHERE json_type(payload, ?) NOT IN ('array', 'object'){only}",
                [field, path, path, path, *extra])
            self._db.execute(
                "INSERT INTO field_index SELECT ?, e.type, e.value, uid FROM points, json_each(points.payload, ?) AS e "
                f"WHERE json_type(payload, ?) = 'array' AND e.type NOT IN ('array', 'object'){only}",
                [field, path, path, *extra])

    def _reader(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self._read_uri, uri=True, isolation_level=None, check_same_thread=False)
            self._local.con = con
            with self._readers_lock:
                self._readers.append(con)
        return con

    def close(self) -> None:
        with self._readers_lock:
            for con in self._readers:
                con.close()
            self._readers.clear()
        self._db.close()

    def _chunks(self, keys: list[Key]):
        for lo in range(0, len(keys), _CHUNK):
            yield keys[lo:lo + _CHUNK]

    def uids_of(self, keys: list[Key], *, for_write: bool = False) -> np.ndarray:
        """uid of each key (int64), -1 where absent (``for_write``: through the writer's
        connection, for a write that depends on it)."""
        con = self._db if for_write else self._reader()
        found: dict[tuple[type, Key], int] = {}
        for part in self._chunks(keys):
            marks = ",".join("?" * len(part))
            for key, uid in con.execute(f"SELECT key, uid FROM points WHERE key IN ({marks})", part):
                found[(type(key), key)] = uid
        return np.array([found.get((type(k), k), -1) for k in keys], np.int64)

    def upsert(self, keys: list[Key], uids: np.ndarray, payloads: list[str]) -> np.ndarray:
        """Store (key, uid, payload) rows, replacing existing keys; returns the replaced uids
        (-1 where the key was new). A uid already stored (a replay) is left as it is."""
        old = self.uids_of(keys, for_write=True)
        rows = [(int(u), k, p) for k, u, p, o in zip(keys, uids, payloads, old) if o != u]
        gone = [(int(o),) for o, u in zip(old, uids) if o >= 0 and o != u]
        with self._transaction():
            self._db.executemany("DELETE FROM points WHERE key = ?", [(r[1],) for r in rows])
            self._db.executemany("INSERT INTO points (uid, key, payload) VALUES (?, ?, ?)", rows)
            if self.indexed:
                self._db.executemany("DELETE FROM field_index WHERE uid = ?", gone)
                new = [r[0] for r in rows]
                for lo in range(0, len(new), _CHUNK):
                    self._index_rows(sorted(self.indexed), new[lo:lo + _CHUNK])
        return np.where(old == uids, -1, old)

    def delete(self, keys: list[Key]) -> np.ndarray:
        """Remove keys; returns the uids removed (absent keys are skipped)."""
        uids = self.uids_of(keys, for_write=True)
        uids = uids[uids >= 0]
        self.delete_uids(uids)
        return uids

    def delete_uids(self, uids: np.ndarray) -> None:
        """Remove the points with these uids (absent ones are skipped)."""
        with self._transaction():
            self._db.executemany("DELETE FROM points WHERE uid = ?", [(int(u),) for u in uids])
            if self.indexed:
                self._db.executemany("DELETE FROM field_index WHERE uid = ?", [(int(u),) for u in uids])

    def get(self, keys: list[Key]) -> list[tuple[int, dict] | None]:
        """(uid, payload) of each key, None where absent."""
        found: dict[tuple[type, Key], tuple[int, dict]] = {}
        for part in self._chunks(keys):
            marks = ",".join("?" * len(part))
            for key, uid, payload in self._reader().execute(
                    f"SELECT key, uid, payload FROM points WHERE key IN ({marks})", part):
                found[(type(key), key)] = (uid, json.loads(payload))
        return [found.get((type(k), k)) for k in keys]

    def keys_of(self, uids: np.ndarray, *, payloads: bool = True,
                as_text: bool = False) -> dict[int, tuple[Key, Any]]:
        """{uid: (key, payload)} of the uids present (payload None unless ``payloads``; its
        JSON text with ``as_text``)."""
        found: dict[int, tuple[Key, dict | None]] = {}
        ulist = [int(u) for u in uids]
        con = self._reader()
        for lo in range(0, len(ulist), _CHUNK):
            part = ulist[lo:lo + _CHUNK]
            marks = ",".join("?" * len(part))
            if payloads:
                for uid, key, payload in con.execute(
                        f"SELECT uid, key, payload FROM points WHERE uid IN ({marks})", part):
                    found[uid] = (key, payload if as_text else json.loads(payload))
            else:
                for uid, key in con.execute(f"SELECT uid, key FROM points WHERE uid IN ({marks})", part):
                    found[uid] = (key, None)
        return found

    def int_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(uids, keys) int64 of every point whose key is an integer."""
        rows = self._reader().execute("SELECT uid, key FROM points WHERE typeof(key) = 'integer'").fetchall()
        arr = np.array(rows, np.int64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def uids_where(self, flt: dict | None = None, *, for_write: bool = False) -> np.ndarray:
        """Sorted uids of the points matching a filter (all points without one)."""
        con = self._db if for_write else self._reader()
        if flt is None:
            rows = con.execute("SELECT uid FROM points ORDER BY uid")
        else:
            sql, params = compile_filter(flt, indexed=self.indexed)
            rows = con.execute(f"SELECT uid FROM points WHERE {sql} ORDER BY uid", params)
        return np.fromiter((u for (u,) in rows), np.int64)

    def count(self, flt: dict | None = None) -> int:
        con = self._reader()
        if flt is None:
            return con.execute("SELECT count(*) FROM points").fetchone()[0]
        sql, params = compile_filter(flt, indexed=self.indexed)
        return con.execute(f"SELECT count(*) FROM points WHERE {sql}", params).fetchone()[0]

    def checkpoint(self) -> None:
        """Write SQLite's own log into the database file and sync it, so that the state so far
        survives without the collection's write-ahead log."""
        self._db.execute("PRAGMA wal_checkpoint(FULL)")

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *exc: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
