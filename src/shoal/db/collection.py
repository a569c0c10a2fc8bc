"""Collections: durable sets of (id, vector, payload) that are searched by vector and filter.

On disk, a collection is a directory::

    config.json       name, dim, metric, m, ef_construction (format 1)
    manifest.json     the live sealed segments, the log position they cover, the next uid
    wal.log           write-ahead log of upserts and deletes since that position
    payloads.sqlite   keys, uids and payloads (``shoal.db.payloads``)
    seg-NNNNNN.shoal  sealed segments: ``shoal.Index`` files whose ids are uids

A write is appended to the log and fsynced before it is applied and before the call returns
(``durability="batch"`` leaves the fsync to ``flush()``/``close()``). New vectors go to the
mutable segment, searched exactly; when it holds ``segment_rows`` rows it is sealed: its live
rows become an HNSW index built by the parallel batch build, saved (temp, fsync, rename), the
manifest is replaced to name it with the log position, and the log starts afresh. Deletes and
replaced vectors are tombstones (a live mask per segment) until ``compact()`` rebuilds the
segments without them. Opening replays the log past the manifest's position.

Searches read an immutable snapshot of the segment list and masks: writers build a new
snapshot and publish it with one assignment, so readers in other threads never block and
never see half of a batch.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from shoal import _validate
from shoal.db.payloads import Key, PayloadStore, check_keys, encode_payloads
from shoal.errors import CorruptIndexError, InvalidArgumentError, ReadOnlyError
from shoal.exact import exact_top_k
from shoal.index import DEFAULT_EF, Index
from shoal.storage.wal import WriteAheadLog, fsync_directory

FORMAT = 1
UPSERT = 1
DELETE = 2
SEGMENT_ROWS = 50_000
MAX_SEGMENTS = 8


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
    file: str
    index: Index
    uids: np.ndarray   # int64 by node, ascending
    live: np.ndarray   # bool by node; replaced, never written, once published


@dataclass(frozen=True)
class _Snapshot:
    sealed: tuple[_Segment, ...]
    vectors: np.ndarray  # mutable segment rows (capacity, dim); rows < count are immutable
    uids: np.ndarray     # int64 (capacity,), ascending below count
    live: np.ndarray     # bool (capacity,); replaced on delete
    count: int


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
        except (OSError, ValueError) as exc:
            raise CorruptIndexError(f"{path}: collection files are missing or damaged ({exc})") from None
        self.name = self.config["name"]
        self.dim = int(self.config["dim"])
        self.metric = self.config["metric"]
        self._index_metric = "ip" if self.metric == "cosine" else self.metric
        self._metric_code = _validate.metric_code(self._index_metric)
        self._write_lock = threading.Lock()
        self._checkpoint = int(manifest["checkpoint_seq"])
        self._next_uid = int(manifest["next_uid"])
        self._next_segment = int(manifest["next_segment"])
        self._store = PayloadStore(os.path.join(path, "payloads.sqlite"), read_only=read_only)
        self._wal = WriteAheadLog(os.path.join(path, "wal.log"), first_seq=self._checkpoint + 1,
                                  read_only=read_only)
        if self._wal.first_seq > self._checkpoint + 1:
            raise CorruptIndexError(f"{path}: the log starts after the manifest's position")
        sealed = []
        for name in manifest["segments"]:
            index = Index.load(os.path.join(path, name))
            sealed.append(_Segment(name, index, index.ids, np.ones(len(index), bool)))
        if not read_only:
            self._remove_orphans({s.file for s in sealed})
        empty = np.zeros((0, self.dim), np.float32)
        self._snap = _Snapshot(tuple(sealed), empty, np.zeros(0, np.int64), np.zeros(0, bool), 0)
        self._replay()

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
                self._append_rows(uids, x)
                self._next_uid = max(self._next_uid, int(uids.max()) + 1)
            elif rec.kind == DELETE and not self.read_only:
                self._store.delete_uids(np.frombuffer(rec.payload, "<i8"))
        live = self._store.uids_where(for_write=not self.read_only)
        snap = self._snap
        sealed = tuple(replace(s, live=np.isin(s.uids, live)) for s in snap.sealed)
        mlive = np.zeros(snap.uids.shape[0], bool)
        mlive[: snap.count] = np.isin(snap.uids[: snap.count], live)
        self._snap = replace(snap, sealed=sealed, live=mlive)

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
            self._append_rows(uids, x)
            self._kill(replaced[replaced >= 0])
            if self._snap.count >= SEGMENT_ROWS:
                self._seal()

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
        return int(uids.size)

    def _append_rows(self, uids: np.ndarray, x: np.ndarray) -> None:
        snap = self._snap
        need = snap.count + len(uids)
        vectors, all_uids, live = snap.vectors, snap.uids, snap.live
        if need > vectors.shape[0]:  # grow into new arrays; old snapshots keep the old ones
            cap = max(need, 2 * vectors.shape[0], 1024)
            vectors = np.zeros((cap, self.dim), np.float32)
            vectors[: snap.count] = snap.vectors[: snap.count]
            all_uids = np.zeros(cap, np.int64)
            all_uids[: snap.count] = snap.uids[: snap.count]
            live = np.zeros(cap, bool)
            live[: snap.count] = snap.live[: snap.count]
        vectors[snap.count:need] = x  # rows past count: no reader looks there
        all_uids[snap.count:need] = uids
        live[snap.count:need] = True
        self._snap = replace(snap, vectors=vectors, uids=all_uids, live=live, count=need)

    def _kill(self, uids: np.ndarray) -> None:
        """Mark ``uids`` deleted in every segment (copy-on-write masks)."""
        if uids.size == 0:
            return
        uids = np.sort(uids)
        snap = self._snap
        sealed = []
        for seg in snap.sealed:
            hit = np.isin(seg.uids, uids, assume_unique=True)
            sealed.append(replace(seg, live=seg.live & ~hit) if hit.any() else seg)
        live = snap.live.copy()
        live[: snap.count] &= ~np.isin(snap.uids[: snap.count], uids, assume_unique=True)
        self._snap = replace(snap, sealed=tuple(sealed), live=live)

    def _build_segment(self, vectors: np.ndarray, uids: np.ndarray) -> _Segment:
        index = Index(self.dim, self._index_metric, m=self.config["m"],
                      ef_construction=self.config["ef_construction"], seed=self._next_segment)
        index.add(vectors, ids=uids)
        name = f"seg-{self._next_segment:06d}.shoal"
        self._next_segment += 1
        index.save(os.path.join(self.path, name))
        return _Segment(name, index, index.ids, np.ones(len(index), bool))

    def _seal(self) -> None:
        """Turn the mutable segment's live rows into a sealed HNSW segment (writer lock held)."""
        snap = self._snap
        rows = np.flatnonzero(snap.live[: snap.count])
        sealed = list(snap.sealed)
        if rows.size:
            sealed.append(self._build_segment(snap.vectors[rows], snap.uids[rows]))
        self._publish(sealed)
        if len(sealed) > MAX_SEGMENTS:
            self._compact_locked()

    def _publish(self, sealed: list[_Segment]) -> None:
        """Make ``sealed`` (with an empty mutable segment) durable and current, then restart the
        log: segment files first, then the payload store, the manifest, and the log."""
        self._store.checkpoint()
        seq = self._wal.last_seq
        write_json(os.path.join(self.path, "manifest.json"), {
            "format": FORMAT, "segments": [s.file for s in sealed], "checkpoint_seq": seq,
            "next_uid": self._next_uid, "next_segment": self._next_segment})
        self._checkpoint = seq
        self._wal.close()
        os.unlink(self._wal.path)
        self._wal = WriteAheadLog(self._wal.path, first_seq=seq + 1)
        empty = np.zeros((0, self.dim), np.float32)
        old = {s.file for s in self._snap.sealed} - {s.file for s in sealed}
        self._snap = _Snapshot(tuple(sealed), empty, np.zeros(0, np.int64), np.zeros(0, bool), 0)
        for name in old:
            os.unlink(os.path.join(self.path, name))

    def create_payload_index(self, field: str) -> None:
        """Index the payload values at dotted path ``field``: filters on it then read a B-tree
        instead of every payload (same results). Idempotent."""
        self._check_writable()
        with self._write_lock:
            self._store.create_index(field)

    def compact(self) -> None:
        """Rebuild all segments, mutable included, into one without deleted rows."""
        self._check_writable()
        with self._write_lock:
            self._compact_locked()

    def _compact_locked(self) -> None:
        snap = self._snap
        parts_x = [s.index.get(s.uids[s.live]) for s in snap.sealed]
        parts_u = [s.uids[s.live] for s in snap.sealed]
        rows = np.flatnonzero(snap.live[: snap.count])
        parts_x.append(snap.vectors[rows])
        parts_u.append(snap.uids[rows])
        uids = np.concatenate(parts_u)
        order = np.argsort(uids, kind="stable")
        sealed = [self._build_segment(np.concatenate(parts_x)[order], uids[order])] if uids.size else []
        self._publish(sealed)

    def flush(self) -> None:
        """Make every write so far durable (only needed with ``durability="batch"``)."""
        if not self.read_only:
            self._wal.sync()

    def close(self) -> None:
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

    def _vector_of(self, snap: _Snapshot, uid: int) -> np.ndarray | None:
        pos = np.searchsorted(snap.uids[: snap.count], uid)
        if pos < snap.count and snap.uids[pos] == uid:
            return snap.vectors[pos].copy()
        for seg in snap.sealed:
            if uid in seg.index:
                return seg.index.get(uid)
        return None

    def search(self, queries: Any, k: int = 10, *, filter: dict | None = None, ef: int | None = None,
               with_payload: bool = True, with_vector: bool = False,
               num_threads: int | None = None) -> list[Hit] | list[list[Hit]]:
        """The ``k`` nearest points of one query (a list of ``Hit``) or of each query of a
        batch (a list of lists), among the points matching ``filter``."""
        k, ef = _validate.k_and_ef(k, ef, DEFAULT_EF)
        one = np.ndim(queries) == 1
        q = _validate.vectors(queries, self.dim, "queries", normalize=self.metric == "cosine")
        allowed = None if filter is None else self._store.uids_where(filter)
        snap = self._snap
        parts_u, parts_d = [], []
        for seg in snap.sealed:
            mask = seg.live if allowed is None else seg.live & np.isin(seg.uids, allowed)
            if mask.all():
                mask = None
            elif not mask.any():
                continue
            uids, dists = seg.index.search_masked(q, k, ef, num_threads, mask)
            parts_u.append(uids)
            parts_d.append(dists)
        rows = snap.live[: snap.count]
        if allowed is not None:
            rows = rows & np.isin(snap.uids[: snap.count], allowed)
        rows = np.flatnonzero(rows)
        pos, dists = exact_top_k(q, snap.vectors[rows], k, self._metric_code)
        parts_u.append(np.where(pos >= 0, snap.uids[rows][np.maximum(pos, 0)] if rows.size else -1, -1))
        parts_d.append(dists)
        all_u = np.concatenate(parts_u, axis=1)
        all_d = np.concatenate(parts_d, axis=1)
        order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
        top_u = np.take_along_axis(all_u, order, 1)
        top_d = np.take_along_axis(all_d, order, 1)
        hits = self._hits(snap, top_u, top_d, with_payload, with_vector)
        return hits[0] if one else hits

    def _hits(self, snap, top_u, top_d, with_payload, with_vector) -> list[list[Hit]]:
        info = self._store.keys_of(np.unique(top_u[top_u >= 0]), payloads=with_payload)
        metric = self.metric
        out = []
        for us, ds in zip(top_u.tolist(), top_d.tolist()):
            row = []
            for u, d in zip(us, ds):
                found = info.get(u)  # None: padding, or deleted since the snapshot
                if found is not None:
                    row.append(Hit(found[0], d, metric, found[1],
                                   self._vector_of(snap, u) if with_vector else None))
            out.append(row)
        return out

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, dim={self.dim}, metric={self.metric!r})"

    def stats(self) -> dict[str, Any]:
        snap = self._snap
        return {"name": self.name, "count": self.count(), "sealed_segments": len(snap.sealed),
                "sealed_rows": int(sum(len(s.uids) for s in snap.sealed)),
                "deleted_rows": int(sum((~s.live).sum() for s in snap.sealed)
                                    + (~snap.live[: snap.count]).sum()),
                "mutable_rows": snap.count, "log_records": len(self._wal)}
