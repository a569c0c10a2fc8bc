"""The payload store: the user's ids (``key``), row ids (``uid``, one per version of a
point) and JSON payloads, in SQLite.

Tables:

- ``points(uid INTEGER PRIMARY KEY, key UNIQUE, payload TEXT)``: the current version of each
  point. ``key`` is the user's id, an int64 or a string (a UUID is a string); the column has
  no type affinity, so ``1`` and ``"1"`` are different keys. ``uid`` is the row id the vector
  segments use (an int64 that is never reused). ``payload`` is a JSON object (``{}`` when
  none was given).
- ``retired(uid, key, payload, seq)``: versions replaced or deleted by the log record ``seq``.
  A row id's key and payload never change, and a retired version stays readable until the
  collection purges it (after no snapshot that still shows it can be in use), so a search
  that runs beside a writer can always name what its snapshot holds.
- ``field_index(field, type, value, uid)``: payload indexes (rows of retired versions stay
  until they are purged, so filters read the same values for every version).
- ``meta(name, value)``: ``applied_seq``, the last log record applied here (in the same
  transaction as the record's rows), so that a replay applies exactly the records after it.

The database runs in SQLite's WAL mode with ``synchronous=NORMAL``; durability of
acknowledged writes is the collection's write-ahead log's job, and ``checkpoint()`` makes
this store durable (a commit with ``synchronous=FULL``) before that log is restarted. A
read-only store pins one read transaction for its life: it sees the store as of the moment
it opened, whatever the writer does after.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson

from shoal.db.filters import compile_filter, json_path
from shoal.errors import InvalidArgumentError, InvalidTypeError
from shoal.storage import files

Key = int | str
_CHUNK = 500  # SQLite's limit on bound parameters is 32766; stay well below it
#: FTS5's tokenizer for documents: Unicode words, case and diacritics folded, English stems.
TOKENIZER = "porter unicode61 remove_diacritics 2"
_WORD = re.compile(r"\w+")
#: Keyword search leaves out of a query the words found in more than this share of the
#: documents (at least COMMON_MIN of them), when some word of the query is rarer: their BM25
#: weight is small (log 9 at 10%, against about 10 for a rare word) and reading their
#: postings is most of the query's time ("the", "of": 54 ms median on WordNet with them).
COMMON_FRACTION = 0.1
COMMON_MIN = 1000


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


def _all_finite(value: Any) -> bool:
    """Whether ``_finite`` finds nothing to refuse in ``value``."""
    try:
        _finite(value, "")
    except (InvalidArgumentError, InvalidTypeError):
        return False
    return True


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
        try:  # orjson refuses non-string keys, ints beyond 64 bits, lone surrogates, ...
            text = orjson.dumps(p)
            if b"null" not in text or _all_finite(p):  # ... but writes NaN as null
                out.append(text.decode())
                continue
        except TypeError:
            pass
        try:  # ... which the standard library takes, or refuses too
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


_LONG_NUMBER = re.compile(r"\d{19}")


def loads(text: str) -> Any:
    """A stored payload's JSON text as Python objects: orjson, but the standard library when
    the text may hold an integer beyond 64 bits (orjson would read it as a float)."""
    if _LONG_NUMBER.search(text):
        return json.loads(text)
    return orjson.loads(text)


class PayloadStore:
    """Keys, uids and payloads of one collection, in the SQLite file ``path``."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._read_uri = f"file:{path}?mode=ro"
        uri = self._read_uri if read_only else f"file:{path}?mode=rwc"
        # Writes (and the reads they depend on) use this connection, under the caller's writer
        # lock; every other thread reads through a connection of its own (SQLite's WAL mode
        # lets readers run beside a writer, each seeing committed transactions only). A
        # read-only store reads through this one connection, pinned (see ``pin``).
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._pinned = False
        self._pin_lock = threading.Lock()
        if not read_only:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS points "
                             "(uid INTEGER PRIMARY KEY, key UNIQUE NOT NULL, payload TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS retired "
                             "(uid INTEGER PRIMARY KEY, key NOT NULL, payload TEXT NOT NULL, seq INTEGER NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS retired_key ON retired (key)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('applied_seq', 0)")
            # Payload indexes: one row per scalar value (array elements included) of each
            # indexed field, kept in the same transactions as ``points``.
            self._db.execute("CREATE TABLE IF NOT EXISTS indexed_fields (field TEXT PRIMARY KEY)")
            self._db.execute("CREATE TABLE IF NOT EXISTS field_index "
                             "(field TEXT NOT NULL, type TEXT NOT NULL, value, uid INTEGER NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS field_index_value ON field_index (field, type, value)")
            self._db.execute("CREATE INDEX IF NOT EXISTS field_index_uid ON field_index (uid)")
            # Documents: one row per version that has one (a version's document never changes),
            # and a full-text index over them kept by triggers in the same transactions
            # (FTS5, external content: the text is stored once).
            self._db.execute("CREATE TABLE IF NOT EXISTS documents (uid INTEGER PRIMARY KEY, document TEXT NOT NULL)")
            self._db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts USING fts5(document, "
                             f"content='documents', content_rowid='uid', tokenize='{TOKENIZER}')")
            self._db.execute("CREATE TRIGGER IF NOT EXISTS documents_insert AFTER INSERT ON documents BEGIN "
                             "INSERT INTO documents_fts (rowid, document) VALUES (new.uid, new.document); END")
            self._db.execute("CREATE TRIGGER IF NOT EXISTS documents_delete AFTER DELETE ON documents BEGIN "
                             "INSERT INTO documents_fts (documents_fts, rowid, document) "
                             "VALUES ('delete', old.uid, old.document); END")
            files.sqlite_committed(path, False)
            files.fsync_directory(os.path.dirname(os.path.abspath(path)))  # the new files' names
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        tables = {t for (t,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._has_retired = "retired" in tables  # a read-only store from before format 3 has none
        self._has_meta = "meta" in tables
        self._has_documents = "documents" in tables  # (nor one from before documents)
        #: About how many documents there are (for ``keyword``'s common words; counted at
        #: open, then kept by this process's writes).
        self._documents = self._db.execute("SELECT count(*) FROM documents").fetchone()[0] \
            if self._has_documents else 0
        self.indexed = frozenset(f for (f,) in self._db.execute("SELECT field FROM indexed_fields")) \
            if "indexed_fields" in tables else frozenset()

    # ------------------------------------------------------------------ connections
    def pin(self) -> None:
        """Start the read transaction a read-only store keeps: every later read sees the store
        as of now. Call ``unpin`` to let go (before pinning again)."""
        self._db.execute("BEGIN")
        self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the snapshot
        self._pinned = True

    def unpin(self) -> None:
        if self._pinned:
            self._db.execute("ROLLBACK")
            self._pinned = False

    @contextmanager
    def _read(self, for_write: bool = False) -> Iterator[sqlite3.Connection]:
        if for_write:
            yield self._db
        elif self._pinned or self.read_only:
            with self._pin_lock:
                yield self._db
        else:
            yield self._reader()

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

    def _chunks(self, keys: list):
        for lo in range(0, len(keys), _CHUNK):
            yield keys[lo:lo + _CHUNK]

    def _tables(self, retired: bool) -> tuple[str, ...]:
        return ("points", "retired") if retired and self._has_retired else ("points",)

    # ------------------------------------------------------------------ writes
    @property
    def applied_seq(self) -> int | None:
        """The last log record applied to this store (0: none; None: a read-only store from
        before this was recorded, which a writer's open adds)."""
        if not self._has_meta:
            return None
        with self._read(for_write=not self.read_only) as con:
            return int(con.execute("SELECT value FROM meta WHERE name = 'applied_seq'").fetchone()[0])

    def _applied(self, seq: int | None) -> None:
        if seq is not None:
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'applied_seq'", (int(seq),))

    def create_index(self, field: str) -> None:
        """Index the payload values at dotted path ``field`` (filters on it then read the
        index instead of every payload). Idempotent; durable when it returns."""
        if not isinstance(field, str):
            raise InvalidTypeError(f"field must be a string, got {type(field).__name__}")
        json_path(field, "field")
        if field in self.indexed:
            return
        with self._transaction(durable=True):
            self._db.execute("INSERT INTO indexed_fields VALUES (?)", (field,))
            for table in ("points", "retired"):
                self._index_rows([field], None, table)
        self.indexed = self.indexed | {field}

    def _index_rows(self, fields, uids: list[int] | None, table: str = "points") -> None:
        """Add the field_index rows of ``fields`` for ``uids`` of ``table`` (all when None)."""
        for field in fields:
            path = json_path(field, "field")
            only, extra = ("", []) if uids is None else (f" AND uid IN ({','.join('?' * len(uids))})", list(uids))
            # json_each at the path yields the value itself when it is a scalar (key NULL),
            # its elements when an array (integer keys), its members when an object (text
            # keys: not indexed): one pass over each payload for both cases.
            self._db.execute(
                f"INSERT INTO field_index SELECT ?, e.type, e.value, uid FROM {table}, json_each({table}.payload, ?) AS e "
                f"WHERE e.type NOT IN ('array', 'object') AND typeof(e.key) != 'text'{only}",
                [field, path, *extra])

    def upsert(self, keys: list[Key], uids: np.ndarray, payloads: list[str], seq: int | None = None,
               documents: list[str | None] | None = None) -> np.ndarray:
        """Store (key, uid, payload) rows and their ``documents`` (None: none), retiring the
        versions they replace; returns the replaced uids (-1 where the key was new). A uid
        already current (a replay) is left as it is. ``seq``: the log record this applies
        (recorded as ``applied_seq``)."""
        old = self.uids_of(keys, for_write=True)
        rows = [(int(u), k, p) for k, u, p, o in zip(keys, uids, payloads, old) if o != u]
        gone = [int(o) for o, u in zip(old, uids) if o >= 0 and o != u]
        docs = [] if documents is None else \
            [(int(u), d) for u, d, o in zip(uids, documents, old) if d is not None and o != u]
        with self._transaction():
            self._retire(gone, seq)
            self._db.executemany("INSERT INTO points (uid, key, payload) VALUES (?, ?, ?)", rows)
            if docs:
                self._db.executemany("INSERT INTO documents (uid, document) VALUES (?, ?)", docs)
                self._documents += len(docs)
            if self.indexed:
                new = [r[0] for r in rows]
                for lo in range(0, len(new), _CHUNK):
                    self._index_rows(sorted(self.indexed), new[lo:lo + _CHUNK])
            self._applied(seq)
        return np.where(old == uids, -1, old)

    def _retire(self, uids: list[int], seq: int | None) -> None:
        marks = [(int(seq or 0), u) for u in uids]
        self._db.executemany("INSERT OR REPLACE INTO retired SELECT uid, key, payload, ? FROM points WHERE uid = ?", marks)
        self._db.executemany("DELETE FROM points WHERE uid = ?", [(u,) for u in uids])

    def delete(self, keys: list[Key], seq: int | None = None) -> np.ndarray:
        """Retire keys; returns the uids retired (absent keys are skipped)."""
        uids = self.uids_of(keys, for_write=True)
        uids = uids[uids >= 0]
        self.delete_uids(uids, seq)
        return uids

    def delete_uids(self, uids: np.ndarray, seq: int | None = None) -> None:
        """Retire the points with these uids (absent ones are skipped)."""
        with self._transaction():
            self._retire([int(u) for u in uids], seq)
            self._applied(seq)

    def purge(self, through_seq: int) -> int:
        """Forget for good the versions retired by log records up to ``through_seq``. Returns
        how many."""
        with self._transaction():
            doomed = [u for (u,) in self._db.execute("SELECT uid FROM retired WHERE seq <= ?", (int(through_seq),))]
            self._db.executemany("DELETE FROM retired WHERE uid = ?", [(u,) for u in doomed])
            self._db.executemany("DELETE FROM field_index WHERE uid = ?", [(u,) for u in doomed])
            gone = self._db.executemany("DELETE FROM documents WHERE uid = ?", [(u,) for u in doomed]).rowcount
        self._documents -= max(gone, 0)
        return len(doomed)

    def roll_back(self, last_seq: int, kept_uids: np.ndarray) -> int:
        """Undo what log records after ``last_seq`` did here, when those records are gone (a
        damaged log cut by a repair, or a log tail that a power loss took while this store kept
        it): current rows that are not among ``kept_uids`` (sorted; the row ids the segments
        and the log still hold) are removed, the versions those records retired come back,
        and ``applied_seq`` becomes ``last_seq``. Returns how many rows it removed."""
        current = self.uids_where(for_write=True)
        stray = np.setdiff1d(current, kept_uids)
        back = [u for (u,) in self._db.execute("SELECT uid FROM retired WHERE seq > ?", (int(last_seq),))]
        back_arr = np.array(back, np.int64)
        restore = back_arr[np.isin(back_arr, kept_uids)]
        if not stray.size and not back and self.applied_seq <= last_seq:
            return 0
        doomed = [(int(u),) for u in np.concatenate([stray, back_arr[~np.isin(back_arr, kept_uids)]])]
        with self._transaction(durable=True):
            self._db.executemany("DELETE FROM points WHERE uid = ?", doomed)
            self._db.executemany("DELETE FROM field_index WHERE uid = ?", doomed)
            self._db.executemany("DELETE FROM documents WHERE uid = ?", doomed)
            self._db.executemany("INSERT INTO points SELECT uid, key, payload FROM retired WHERE uid = ?",
                                 [(int(u),) for u in restore])
            self._db.executemany("DELETE FROM retired WHERE uid = ?", [(u,) for u in back])
            self._applied(last_seq)
        return len(doomed)

    def checkpoint(self, seq: int | None = None) -> None:
        """Make everything committed so far durable (one commit with ``synchronous=FULL``
        syncs SQLite's log), then copy its log into the database file as far as readers
        allow, without waiting for them."""
        with self._transaction(durable=True):
            self._applied(seq)
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _transaction(self, durable: bool = False):
        return _Transaction(self._db, self.path, durable)

    # ------------------------------------------------------------------ reads
    def uids_of(self, keys: list[Key], *, for_write: bool = False) -> np.ndarray:
        """Current uid of each key (int64), -1 where absent (``for_write``: through the
        writer's connection, for a write that depends on it)."""
        found: dict[tuple[type, Key], int] = {}
        with self._read(for_write) as con:
            for part in self._chunks(keys):
                marks = ",".join("?" * len(part))
                for key, uid in con.execute(f"SELECT key, uid FROM points WHERE key IN ({marks})", part):
                    found[(type(key), key)] = uid
        return np.array([found.get((type(k), k), -1) for k in keys], np.int64)

    def get(self, keys: list[Key]) -> list[tuple[int, dict] | None]:
        """(uid, payload) of the current version of each key, None where absent."""
        found: dict[tuple[type, Key], tuple[int, dict]] = {}
        with self._read() as con:
            for part in self._chunks(keys):
                marks = ",".join("?" * len(part))
                for key, uid, payload in con.execute(
                        f"SELECT key, uid, payload FROM points WHERE key IN ({marks})", part):
                    found[(type(key), key)] = (uid, loads(payload))
        return [found.get((type(k), k)) for k in keys]

    def versions(self, keys: list[Key]) -> list[list[tuple[int, str]]]:
        """Every version not yet purged of each key: [(uid, payload JSON text)], current or
        retired (a caller picks the one its snapshot shows)."""
        found: dict[tuple[type, Key], list[tuple[int, str]]] = {}
        tables = self._tables(True)
        with self._read() as con:
            for part in self._chunks(keys):
                marks = ",".join("?" * len(part))
                sql = " UNION ALL ".join(f"SELECT key, uid, payload FROM {t} WHERE key IN ({marks})" for t in tables)
                for key, uid, payload in con.execute(sql, part * len(tables)):
                    found.setdefault((type(key), key), []).append((uid, payload))
        return [found.get((type(k), k), []) for k in keys]

    def keys_of(self, uids: np.ndarray, *, payloads: bool = True, as_text: bool = False,
                retired: bool = False) -> dict[int, tuple[Key, Any]]:
        """{uid: (key, payload)} of the uids present (payload None unless ``payloads``; its
        JSON text with ``as_text``); ``retired``: versions not yet purged too."""
        found: dict[int, tuple[Key, Any]] = {}
        cols = "uid, key, payload" if payloads else "uid, key, NULL"
        todo = [int(u) for u in uids]
        with self._read() as con:
            # Current versions first, then the retired table for what was not there: a version
            # retired between the two statements is found by the second (it only ever moves
            # from points to retired while a snapshot that shows it lives).
            for table in self._tables(retired):
                for lo in range(0, len(todo), _CHUNK):
                    part = todo[lo:lo + _CHUNK]
                    marks = ",".join("?" * len(part))
                    for uid, key, payload in con.execute(f"SELECT {cols} FROM {table} WHERE uid IN ({marks})", part):
                        found[uid] = (key, payload if as_text or not payloads else loads(payload))
                todo = [u for u in todo if u not in found]
                if not todo:
                    break
        return found

    def documents_of(self, uids: np.ndarray) -> dict[int, str]:
        """{uid: document} of the versions among ``uids`` that have one."""
        found: dict[int, str] = {}
        if not self._has_documents:
            return found
        todo = [int(u) for u in uids]
        with self._read() as con:
            for lo in range(0, len(todo), _CHUNK):
                part = todo[lo:lo + _CHUNK]
                marks = ",".join("?" * len(part))
                found.update(con.execute(f"SELECT uid, document FROM documents WHERE uid IN ({marks})", part))
        return found

    def keyword(self, text: str, limit: int, flt: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``limit`` versions (current or retired: the caller keeps those its snapshot
        shows) whose documents best match the words of ``text`` by BM25 (any word may match;
        rarer words weigh more), among those matching ``flt``: uids int64 and scores float64
        (higher is better), best first."""
        words = list(dict.fromkeys(_WORD.findall(text)))
        if not words or not self._has_documents:
            return np.zeros(0, np.int64), np.zeros(0)
        with self._read() as con:
            words = self._uncommon(con, words)
        query = " OR ".join(f'"{w}"' for w in words)  # each word quoted: no FTS5 syntax from users
        sql = ("SELECT rowid, -bm25(documents_fts) FROM documents_fts WHERE documents_fts MATCH ?")
        params: list[Any] = [query]
        if flt is not None:
            parts = []
            for table in self._tables(True):
                cond, args = compile_filter(flt, indexed=self.indexed, uid="uid" if table == "points" else "+uid")
                parts.append(f"SELECT uid FROM {table} WHERE {cond}")
                params += args
            sql += f" AND rowid IN ({' UNION ALL '.join(parts)})"
        sql += " ORDER BY bm25(documents_fts), rowid LIMIT ?"
        params.append(int(limit))
        with self._read() as con:
            rows = con.execute(sql, params).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0)
        uids, scores = zip(*rows)
        return np.array(uids, np.int64), np.array(scores, np.float64)

    def _uncommon(self, con: sqlite3.Connection, words: list[str]) -> list[str]:
        """``words`` less those in more than ``COMMON_FRACTION`` of the documents (all of
        them if every one is that common). Counting stops past the threshold."""
        limit = max(int(COMMON_FRACTION * self._documents), COMMON_MIN)
        if self._documents <= limit:
            return words
        rare = [w for w in words if con.execute(
            "SELECT count(*) FROM (SELECT 1 FROM documents_fts WHERE documents_fts MATCH ? LIMIT ?)",
            (f'"{w}"', limit + 1)).fetchone()[0] <= limit]
        return rare or words

    def int_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(uids, keys) int64 of every version (retired ones too) whose key is an integer."""
        uids, keys = [], []
        with self._read() as con:
            for table in self._tables(True):
                # (one aggregate call sees the rows in one order: the two lists pair up)
                u, k = con.execute(f"SELECT group_concat(uid), group_concat(key) FROM {table} "
                                   "WHERE typeof(key) = 'integer'").fetchone()
                uids.append(_int_list(u))
                keys.append(_int_list(k))
        return np.concatenate(uids), np.concatenate(keys)

    def uids_where(self, flt: dict | None = None, *, for_write: bool = False,
                   retired: bool = False) -> np.ndarray:
        """Sorted uids of the current points matching a filter (all points without one);
        ``retired``: versions not yet purged too."""
        parts, params = [], []
        for table in self._tables(retired):
            # The retired table is small: scan it ("+uid"), or a payload index's row ids would
            # drive its query and cost as much as the current table's.
            sql, args = ("1", []) if flt is None else compile_filter(
                flt, indexed=self.indexed, uid="uid" if table == "points" else "+uid")
            parts.append(f"SELECT uid FROM {table} WHERE {sql}")
            params += args
        with self._read(for_write) as con:  # one statement: one read snapshot of both tables
            text = con.execute(f"SELECT group_concat(uid) FROM ({' UNION ALL '.join(parts)})",
                               params).fetchone()[0]
        return np.sort(_int_list(text))

    def count(self, flt: dict | None = None) -> int:
        """Number of current points (matching ``flt``)."""
        with self._read() as con:
            if flt is None:
                return con.execute("SELECT count(*) FROM points").fetchone()[0]
            sql, params = compile_filter(flt, indexed=self.indexed)
            return con.execute(f"SELECT count(*) FROM points WHERE {sql}", params).fetchone()[0]


def _int_list(text: str | None) -> np.ndarray:
    """int64 array of SQLite's ``group_concat`` of integers (None: no rows). One string
    parsed by NumPy costs a third of fetching the rows one Python tuple at a time."""
    if not text:
        return np.zeros(0, np.int64)
    return np.fromstring(text, dtype=np.int64, sep=",")


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error, the commit's included).
    A ``durable`` one commits with ``synchronous=FULL``: SQLite syncs its log first."""

    def __init__(self, db: sqlite3.Connection, path: str, durable: bool) -> None:
        self._db, self._path, self._durable = db, path, durable

    def __enter__(self) -> None:
        if self._durable:
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *exc: object) -> None:
        try:
            if exc_type is None:
                try:
                    files.sqlite_commit(self._path)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                files.sqlite_committed(self._path, self._durable)
                return
            self._db.execute("ROLLBACK")
        finally:
            if self._durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
