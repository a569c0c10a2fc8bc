"""Collections: durable sets of (id, vector, payload) that are searched by vector and filter.

On disk, a collection is a directory::

    config.json       name, dim, metric, m, ef_construction (format 1)
    manifest.json     the segment files, which of them is active, the log position they
                      cover, the next row id and segment number
    wal.log           write-ahead log of upserts and deletes since that position
    payloads.sqlite   keys, row ids and payloads (``shoal.db.payloads``)
    seg-NNNNNN.shoal  segments: ``shoal.Index`` files whose ids are row ids

A write is appended to the log and fsynced before it is applied and before the call returns
(``durability="batch"`` leaves the fsync to ``flush()``/``close()``). New vectors are linked
straight into the *active* segment, an HNSW graph that grows batch by batch (the parallel
batch insertion of ``shoal.Index``); a search sees a write as soon as the call returns.
A checkpoint saves the active segment (temp, fsync, rename), replaces the manifest to name
it with the log position, and starts the log afresh; it runs when the log holds more than
half the active segment's rows (at least ``CHECKPOINT_MIN_ROWS``, at most
``CHECKPOINT_MAX_ROWS``: this bounds the replay after a crash) and on ``close()``. An
active segment of ``SEAL_ROWS`` rows is sealed: it stays as it is and a new one starts.
Deletes and replaced vectors are tombstones (a live mask per segment) that searches skip;
``compact()``, or the automatic policy when a third of the rows are dead, rebuilds the
segments into one without them. Opening replays the log past the manifest's position.

Searches read an immutable snapshot of the segment list, graph views and masks: the writer
builds a new snapshot and publishes it with one assignment, so readers in other threads
never block and never see half of a batch (``shoal.index.GraphView`` says why reading a
graph that is being grown is safe).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass, replace
from typing import Any, Iterator, NamedTuple

import numba
import numpy as np

from shoal import _validate
from shoal.db.payloads import Key, PayloadStore, check_keys, encode_payloads
from shoal.errors import CorruptIndexError, InvalidArgumentError, ReadOnlyError
from shoal.index import DEFAULT_EF, GraphView, Index
from shoal.storage.wal import WriteAheadLog, fsync_directory

FORMAT = 2
UPSERT = 1
DELETE = 2
#: The active segment is sealed (and a new one started) at this many rows.
SEAL_ROWS = 1_000_000
CHECKPOINT_MIN_ROWS = 20_000
CHECKPOINT_MAX_ROWS = 200_000
#: Compact automatically when this share of the rows are deleted or replaced ...
COMPACT_DEAD_SHARE = 1 / 3
#: ... and there are at least this many rows.
COMPACT_MIN_ROWS = 10_000


class Hit(NamedTuple):
    """One search result. ``distance`` is in the metric's convention (smaller is closer);
    ``score`` is the similarity a user of Qdrant or Chroma expects: cosine similarity or inner
    product, and minus the squared distance for l2."""

    id: Key
    distance: float
    metric: str
    payload: dict | None = None
    vector: np.ndarray | None = None

    @property
    def score(self) -> float:
        return -self.distance if self.metric == "l2" else 1.0 - self.distance


@dataclass(frozen=True)
class _Segment:
    file: str | None   # the file holding it as of the last checkpoint (None: not saved yet)
    index: Index
    view: GraphView    # the graph as of this snapshot; node i has the i-th smallest row id
    live: np.ndarray   # bool, at least view.count; replaced, never written, below count
    dead: int          # nodes below count that are not live

    @property
    def uids(self) -> np.ndarray:
        """Row ids by node (ascending)."""
        return self.view.ids[: self.view.count]


@dataclass(frozen=True)
class _Snapshot:
    segments: tuple[_Segment, ...]   # sealed ones, then the active one (if any)


def write_json(path: str, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically (temp, fsync, rename, fsync dir)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def _encode_upsert(uids: np.ndarray, keys: list[Key], payloads: list[str], x: np.ndarray) -> bytes:
    head = json.dumps({"uids": uids.tolist(), "keys": keys, "payloads": payloads}).encode()
    return struct.pack("<I", len(head)) + head + x.astype("<f4").tobytes()


def _decode_upsert(blob: bytes, dim: int):
    (size,) = struct.unpack_from("<I", blob)
    head = json.loads(blob[4:4 + size])
    x = np.frombuffer(blob, dtype="<f4", offset=4 + size).reshape(-1, dim).astype(np.float32)
    return np.array(head["uids"], np.int64), head["keys"], head["payloads"], x


class Collection:
    """A named collection in a ``shoal.Database``; get one with ``db.create_collection`` or
    ``db.get_collection``, not by calling this class."""

    def __init__(self, path: str, *, read_only: bool = False, durability: str = "sync") -> None:
        self.path = path
        self.read_only = read_only
        if durability not in ("sync", "batch"):
            raise InvalidArgumentError(f"durability must be 'sync' or 'batch', got {durability!r}")
        self._sync = durability == "sync"
        try:
            with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
                self.config = json.load(f)
            with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
                manifest = json.load(f)
            if manifest.get("format") != FORMAT:
                raise ValueError(f"manifest format {manifest.get('format')!r}, expected {FORMAT}")
        except (OSError, ValueError) as exc:
            raise CorruptIndexError(f"{path}: collection files are missing or damaged ({exc})") from None
        self.name = self.config["name"]
        self.dim = int(self.config["dim"])
        self.metric = self.config["metric"]
        self._index_metric = "ip" if self.metric == "cosine" else self.metric
        self._write_lock = threading.Lock()
        self._checkpoint = int(manifest["checkpoint_seq"])
        self._next_uid = int(manifest["next_uid"])
        self._next_segment = int(manifest["next_segment"])
        self._store = PayloadStore(os.path.join(path, "payloads.sqlite"), read_only=read_only)
        self._wal = WriteAheadLog(os.path.join(path, "wal.log"), first_seq=self._checkpoint + 1,
                                  read_only=read_only)
        if self._wal.first_seq > self._checkpoint + 1:
            raise CorruptIndexError(f"{path}: the log starts after the manifest's position")
        segments = []
        for name in manifest["segments"]:
            index = Index.load(os.path.join(path, name))
            segments.append(self._segment(name, index, None))
        self._active: Index | None = None
        if manifest.get("active") is not None:
            if not segments or segments[-1].file != manifest["active"]:
                raise CorruptIndexError(f"{path}: the manifest's active segment is not its last")
            self._active = segments[-1].index
            self._active.keep_codes = True
        if not read_only:
            self._remove_orphans({s.file for s in segments})
        self._snap = _Snapshot(tuple(segments))
        self._logged_rows = 0
        # Integer keys by row id, for turning search results into ids without SQLite:
        # (keys int64, known uint8) replaced together, grown by copying.
        self._keys: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.uint8))
        uids, keys = self._store.int_keys()
        self._remember_keys(uids, keys)
        self._replay()

    @staticmethod
    def _segment(file: str | None, index: Index, live: np.ndarray | None) -> _Segment:
        view = index.view()
        if live is None:
            live = np.ones(view.count, bool)
        return _Segment(file, index, view, live, int(view.count - live[: view.count].sum()))

    def _new_index(self) -> Index:
        index = Index(self.dim, self._index_metric, m=self.config["m"],
                      ef_construction=self.config["ef_construction"], seed=self._next_segment)
        index.keep_codes = True  # it grows by many small batches: keep its construction codes
        return index

    # ------------------------------------------------------------------ recovery
    def _remove_orphans(self, keep: set[str]) -> None:
        for name in os.listdir(self.path):
            if (name.startswith("seg-") and name not in keep) or name.endswith(".tmp"):
                os.unlink(os.path.join(self.path, name))

    def _replay(self) -> None:
        """Apply the log past the checkpoint, then take the live sets from the payload store."""
        for rec in self._wal.records(after=self._checkpoint):
            if rec.kind == UPSERT:
                uids, keys, payloads, x = _decode_upsert(rec.payload, self.dim)
                if not self.read_only:
                    self._store.upsert(keys, uids, payloads)
                self._insert(uids, x)
                self._remember_int_keys(uids, keys)
                self._next_uid = max(self._next_uid, int(uids.max()) + 1)
            elif rec.kind == DELETE and not self.read_only:
                self._store.delete_uids(np.frombuffer(rec.payload, "<i8"))
        live = self._store.uids_where(for_write=not self.read_only)
        segments = []
        for seg in self._snap.segments:
            mask = np.isin(seg.uids, live)
            segments.append(replace(seg, live=mask, dead=int(mask.size - mask.sum())))
        self._snap = _Snapshot(tuple(segments))

    # ------------------------------------------------------------------ writes
    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"collection {self.name!r} is open read-only")

    def upsert(self, ids: Any, vectors: Any, payloads: Any = None) -> None:
        """Insert or replace points: ids (ints or strings), vectors (n, dim), payloads (JSON
        objects or None). Durable when it returns (``durability="sync"``)."""
        self._check_writable()
        keys = check_keys(ids)
        x, norms = _validate.vectors_and_norms(vectors, self.dim, "vectors", need_norms=self.metric == "cosine")
        if x.shape[0] != len(keys):
            raise InvalidArgumentError(f"ids has {len(keys)} entries but vectors has {x.shape[0]} rows")
        texts = encode_payloads(payloads, len(keys))
        if not keys:
            return
        if norms is not None:
            x = x / norms[:, None]
        with self._write_lock:
            uids = np.arange(self._next_uid, self._next_uid + len(keys), dtype=np.int64)
            self._wal.append(UPSERT, _encode_upsert(uids, keys, texts, x), sync=self._sync)
            self._next_uid += len(keys)
            replaced = self._store.upsert(keys, uids, texts)
            self._remember_int_keys(uids, keys)
            self._insert(uids, x)
            self._kill(replaced[replaced >= 0])
            self._maintain()

    def delete(self, ids: Any = None, *, filter: dict | None = None) -> int:
        """Delete points by ids or by filter (exactly one); returns how many were deleted."""
        self._check_writable()
        if (ids is None) == (filter is None):
            raise InvalidArgumentError("delete takes ids or filter (exactly one)")
        with self._write_lock:
            if ids is not None:
                uids = self._store.uids_of(check_keys(ids), for_write=True)
                uids = uids[uids >= 0]
            else:
                uids = self._store.uids_where(filter, for_write=True)
            if uids.size == 0:
                return 0
            self._wal.append(DELETE, uids.astype("<i8").tobytes(), sync=self._sync)
            self._store.delete_uids(uids)
            self._kill(uids)
            self._maintain()
        return int(uids.size)

    def _remember_int_keys(self, uids: np.ndarray, keys: list[Key]) -> None:
        ints = np.fromiter((type(k) is int for k in keys), bool, len(keys))
        if ints.any():
            self._remember_keys(uids[ints], np.array([k for k in keys if type(k) is int], np.int64))

    def _remember_keys(self, uids: np.ndarray, keys: np.ndarray) -> None:
        """Record integer ``keys`` of row ids ``uids`` (before the rows are published)."""
        if uids.size == 0:
            return
        key_of, known = self._keys
        need = int(uids.max()) + 1
        if need > key_of.size:
            size = max(need, 2 * key_of.size, 1024)
            grown_keys = np.zeros(size, np.int64)
            grown_keys[: key_of.size] = key_of
            grown_known = np.zeros(size, np.uint8)
            grown_known[: known.size] = known
            key_of, known = grown_keys, grown_known
        key_of[uids] = keys
        known[uids] = 1
        self._keys = (key_of, known)

    def _insert(self, uids: np.ndarray, x: np.ndarray) -> None:
        """Link rows into the active segment (started if there is none) and publish them."""
        segments = list(self._snap.segments)
        if self._active is None:
            self._active = self._new_index()
            old = None
        else:
            old = segments.pop()
        # Under inner product some rows are nobody's neighbour and pruning strands many: run
        # the full reachability pass. For unit rows (cosine) and l2, checking the new rows
        # is enough between checkpoints (tests/db: every row stays findable at once).
        self._active.add_trusted(x, None, uids, numba.config.NUMBA_NUM_THREADS,
                                 repair=self.metric == "ip")
        self._logged_rows += len(uids)
        view = self._active.view()
        if old is not None and old.live.shape[0] >= view.count:
            live = old.live  # rows past the old count: no reader looks there
        else:
            live = np.zeros(max(view.vectors.shape[0], view.count), bool)
            if old is not None:
                live[: old.view.count] = old.live[: old.view.count]
        live[view.count - len(uids): view.count] = True
        file = None if old is None else old.file
        segments.append(_Segment(file, self._active, view, live, 0 if old is None else old.dead))
        self._snap = _Snapshot(tuple(segments))

    def _kill(self, uids: np.ndarray) -> None:
        """Mark ``uids`` deleted in every segment (copy-on-write masks)."""
        if uids.size == 0:
            return
        uids = np.sort(uids)
        segments = []
        for seg in self._snap.segments:
            hit = np.isin(seg.uids, uids, assume_unique=True)
            if hit.any():
                live = seg.live.copy()
                fresh = hit & live[: hit.size]
                live[: hit.size] &= ~hit
                seg = replace(seg, live=live, dead=seg.dead + int(fresh.sum()))
            segments.append(seg)
        self._snap = _Snapshot(tuple(segments))

    def _maintain(self) -> None:
        """The automatic policies, after a write (writer lock held): compact when a third of
        the rows are dead, checkpoint when the log is long, seal a full active segment."""
        segments = self._snap.segments
        rows = sum(s.view.count for s in segments)
        dead = sum(s.dead for s in segments)
        if rows >= COMPACT_MIN_ROWS and dead >= COMPACT_DEAD_SHARE * rows:
            self._compact_locked()
            return
        active = 0 if self._active is None else len(self._active)
        due = min(max(CHECKPOINT_MIN_ROWS, active // 2), CHECKPOINT_MAX_ROWS)
        if self._logged_rows >= due or active >= SEAL_ROWS:
            self._checkpoint_locked(seal=active >= SEAL_ROWS)

    def _checkpoint_locked(self, seal: bool = False) -> None:
        """Save the active segment if it changed, then make the segment list durable and
        current and restart the log: segment file, payload store, manifest, log. With
        ``seal`` the active segment stays as it is and the next write starts a new one."""
        segments = list(self._snap.segments)
        replaced = set()
        if self._active is not None and (segments[-1].file is None or self._logged_rows):
            self._active.repair()
            name = f"seg-{self._next_segment:06d}.shoal"
            self._next_segment += 1
            self._active.save(os.path.join(self.path, name))
            old = segments.pop()
            if old.file is not None:
                replaced.add(old.file)
            # the repair may have written links: take a fresh view
            segments.append(replace(old, file=name, view=self._active.view()))
        self._store.checkpoint()
        seq = self._wal.last_seq
        active = None if self._active is None or seal else segments[-1].file
        write_json(os.path.join(self.path, "manifest.json"), {
            "format": FORMAT, "segments": [s.file for s in segments], "active": active,
            "checkpoint_seq": seq, "next_uid": self._next_uid, "next_segment": self._next_segment})
        self._checkpoint = seq
        self._wal.close()
        os.unlink(self._wal.path)
        self._wal = WriteAheadLog(self._wal.path, first_seq=seq + 1)
        self._logged_rows = 0
        before = {s.file for s in self._snap.segments}
        self._snap = _Snapshot(tuple(segments))
        if seal:
            self._active = None
        for name in (before | replaced) - {s.file for s in segments} - {None}:
            os.unlink(os.path.join(self.path, name))

    def checkpoint(self) -> None:
        """Save the active segment and restart the log now (``close()`` does it too)."""
        self._check_writable()
        with self._write_lock:
            self._checkpoint_locked()

    def create_payload_index(self, field: str) -> None:
        """Index the payload values at dotted path ``field``: filters on it then read a B-tree
        instead of every payload (same results). Idempotent."""
        self._check_writable()
        with self._write_lock:
            self._store.create_index(field)

    def compact(self) -> None:
        """Rebuild all segments into one without deleted or replaced rows (it becomes the
        active segment, or is sealed if it is full)."""
        self._check_writable()
        with self._write_lock:
            self._compact_locked()

    def _compact_locked(self) -> None:
        segments = self._snap.segments
        parts_x, parts_u = [], []
        for seg in segments:
            nodes = np.flatnonzero(seg.live[: seg.view.count])
            parts_x.append(seg.view.vectors[nodes])
            parts_u.append(seg.uids[nodes])
        uids = np.concatenate(parts_u) if parts_u else np.zeros(0, np.int64)
        order = np.argsort(uids, kind="stable")
        self._active = None
        if uids.size:
            index = self._new_index()
            index.add(np.concatenate(parts_x)[order], ids=uids[order])
            self._active = index
            new = (self._segment(None, index, None),)
        else:
            new = ()
        self._snap = _Snapshot(new)
        self._checkpoint_locked(seal=uids.size >= SEAL_ROWS)
        # the old files are no longer named by the manifest
        keep = {s.file for s in self._snap.segments}
        for seg in segments:
            if seg.file is not None and seg.file not in keep:
                os.unlink(os.path.join(self.path, seg.file))

    def flush(self) -> None:
        """Make every write so far durable (only needed with ``durability="batch"``)."""
        if not self.read_only:
            self._wal.sync()

    def close(self) -> None:
        """Checkpoint (so that the next open replays nothing) and close the files."""
        if not self.read_only:
            with self._write_lock:
                if self._logged_rows or (self._active is not None and self._snap.segments[-1].file is None):
                    self._checkpoint_locked()
                self.flush()
        self._wal.close()
        self._store.close()

    # ------------------------------------------------------------------ reads
    def count(self, filter: dict | None = None) -> int:
        """Number of points (matching ``filter``)."""
        return self._store.count(filter)

    def get(self, ids: Any, *, with_vector: bool = True) -> list[dict | None]:
        """``{"id", "payload", "vector"}`` of each id, None where absent."""
        keys = check_keys(ids)
        found = self._store.get(keys)
        snap = self._snap
        out: list[dict | None] = []
        for key, item in zip(keys, found):
            if item is None:
                out.append(None)
                continue
            uid, payload = item
            rec: dict[str, Any] = {"id": key, "payload": payload}
            if with_vector:
                rec["vector"] = self._vector_of(snap, uid)
            out.append(rec)
        return out

    @staticmethod
    def _vector_of(snap: _Snapshot, uid: int) -> np.ndarray | None:
        for seg in snap.segments:
            uids = seg.uids
            pos = int(np.searchsorted(uids, uid))
            if pos < uids.size and uids[pos] == uid:
                return seg.view.vectors[pos].copy()
        return None

    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[Key], np.ndarray, list[dict]]]:
        """Every point, as batches of (ids, vectors, payloads), from one snapshot (for exports)."""
        batch_size = _validate.positive_int(batch_size, "batch_size")
        snap = self._snap
        for seg in snap.segments:
            nodes = np.flatnonzero(seg.live[: seg.view.count])
            for lo in range(0, nodes.size, batch_size):
                part = nodes[lo:lo + batch_size]
                uids = seg.uids[part]
                info = self._store.keys_of(uids, payloads=True)
                keep = [i for i, u in enumerate(uids.tolist()) if u in info]  # not deleted since
                found = [info[u] for u in uids[keep].tolist()]
                yield [f[0] for f in found], seg.view.vectors[part[keep]], [f[1] for f in found]

    def search(self, queries: Any, k: int = 10, *, filter: dict | None = None, ef: int | None = None,
               with_payload: bool = True, with_vector: bool = False,
               num_threads: int | None = None) -> list[Hit] | list[list[Hit]]:
        """The ``k`` nearest points of one query (a list of ``Hit``) or of each query of a
        batch (a list of lists), among the points matching ``filter``."""
        rows = self.search_rows(queries, k, filter=filter, ef=ef, with_payload=with_payload,
                                with_vector=with_vector, num_threads=num_threads)
        metric = self.metric
        hits = [[Hit(key, d, metric, payload, vector) for key, d, payload, vector in row] for row in rows]
        return hits[0] if np.ndim(queries) == 1 else hits

    def search_rows(self, queries: Any, k: int = 10, *, filter: dict | None = None,
                    ef: int | None = None, with_payload: bool = True, with_vector: bool = False,
                    num_threads: int | None = None, payload_text: bool = False) -> list[list[tuple]]:
        """``search`` as plain tuples ``(id, distance, payload, vector)``, one list per query
        (a 1-D query is a batch of one): for callers that serialise results (the server).
        With ``payload_text`` payloads stay the JSON text they are stored as."""
        k, ef = _validate.k_and_ef(k, ef, DEFAULT_EF)
        q = _validate.vectors(queries, self.dim, "queries", normalize=self.metric == "cosine")
        allowed = None if filter is None else self._store.uids_where(filter)
        snap = self._snap
        parts_u, parts_d = [], []
        for seg in snap.segments:
            count = seg.view.count
            if allowed is None:
                mask = None if seg.dead == 0 else seg.live[:count]
            else:
                mask = seg.live[:count] & np.isin(seg.uids, allowed)
                if not mask.any():
                    continue
            uids, dists = seg.index.search_masked(q, k, ef, num_threads, mask, view=seg.view)
            parts_u.append(uids)
            parts_d.append(dists)
        if not parts_u:
            top_u = np.full((q.shape[0], k), -1, np.int64)
            top_d = np.full((q.shape[0], k), np.inf, np.float32)
        elif len(parts_u) == 1:
            top_u, top_d = parts_u[0], parts_d[0]
        else:
            all_u = np.concatenate(parts_u, axis=1)
            all_d = np.concatenate(parts_d, axis=1)
            order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
            top_u = np.take_along_axis(all_u, order, 1)
            top_d = np.take_along_axis(all_d, order, 1)
        return self._rows(snap, top_u, top_d, with_payload, with_vector, payload_text)

    def _rows(self, snap, top_u, top_d, with_payload, with_vector, payload_text=False) -> list[list[tuple]]:
        """(id, distance, payload, vector) of result row ids: integer keys come from memory,
        string keys and payloads from the payload store."""
        key_of, known = self._keys
        n = known.size
        clipped = np.clip(top_u, 0, max(n - 1, 0))
        is_int = (top_u >= 0) & (top_u < n) & (known[clipped] == 1) if n else np.zeros(top_u.shape, bool)
        lookup = top_u[(top_u >= 0) & (~is_int | with_payload)]
        info = self._store.keys_of(np.unique(lookup), payloads=with_payload,
                                   as_text=payload_text) if lookup.size else {}
        int_keys = key_of[clipped].tolist() if n else None
        out = []
        for i, (us, ds) in enumerate(zip(top_u.tolist(), top_d.tolist())):
            row = []
            for j, (u, d) in enumerate(zip(us, ds)):
                if u < 0:
                    continue
                if is_int[i, j] and not with_payload:
                    key, payload = int_keys[i][j], None
                else:
                    found = info.get(u)  # None: deleted since the snapshot
                    if found is None:
                        continue
                    key, payload = found
                row.append((key, d, payload, self._vector_of(snap, u) if with_vector else None))
            out.append(row)
        return out

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, dim={self.dim}, metric={self.metric!r})"

    def stats(self) -> dict[str, Any]:
        """Points, segments (rows, deleted rows, which is active) and the log's length."""
        snap = self._snap
        active = self._active
        return {"name": self.name, "count": self.count(),
                "segments": [{"file": seg.file, "rows": seg.view.count, "deleted_rows": seg.dead,
                              "active": seg.index is active} for seg in snap.segments],
                "rows": int(sum(seg.view.count for seg in snap.segments)),
                "memory_bytes": int(sum(seg.index.stats()["memory_bytes"] for seg in snap.segments)),
                "deleted_rows": int(sum(seg.dead for seg in snap.segments)),
                "log_records": len(self._wal)}
