"""Collections: durable sets of (id, vector, payload) that are searched by vector and filter.

On disk, a collection is a directory (``shoal.db.manifest``)::

    config.json       name, dim, metric, m, ef_construction, on_disk
    manifest.json     the segment files, which of them is active, the log position they
                      cover, the next row id and segment number
    wal.log           write-ahead log of upserts and deletes since that position
                      (``shoal.storage.wal``; records in ``shoal.db.records``)
    payloads.sqlite   keys, row ids and payloads (``shoal.db.payloads``)
    seg-NNNNNN.shoal  segments: ``shoal.Index`` files whose ids are row ids; their links,
                      with the vectors and codes in row files they name:
    seg-NNNNNN.f32    a segment's float32 rows, appended at checkpoints, never rewritten
    seg-NNNNNN.u8     its search codes, the same (a new file when the codes' range widens)

Words: a point's *id* is the user's (an int or a string); each version of a point has a
*row id* (``uid``, never reused); a segment's graph numbers its rows as *nodes*.

A write is appended to the log and fsynced before it is applied and before the call returns
(``durability="batch"`` leaves the fsync to ``flush()``/``close()``); then the payload store
commits it, then the graph publishes it: new rows and the tombstones of the versions they
replace in one snapshot (``shoal.db.snapshot``), so a search sees every point exactly once.
A checkpoint appends the active segment's new rows to its row files (fsync), writes its
links and header to a new segment file (temp, fsync, rename), makes the payload store
durable, replaces the manifest and starts the log afresh: its cost follows the rows added and
the links, not the rows already saved. When it runs, and when segments are sealed or
compacted, is a ``Policy``'s decision (``shoal.db.policy``).

With ``on_disk`` (chosen when the collection is created) the float32 rows stay in their row
files, memory-mapped, and RAM holds the codes and links: a collection larger than RAM.

An I/O error while writing (from the log, a segment file, the manifest or SQLite) leaves the
failed operation all or nothing: the collection raises ``StorageError`` and refuses further
writes until it is reopened; reopening replays the log, so every acknowledged write is there.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NamedTuple

import numba
import numpy as np

from shoal.db import contract
from shoal.db import manifest as manifest_file
from shoal.db.jobs import Checkpoint, Compaction
from shoal.db.payloads import Key, PayloadStore, loads
from shoal.db.policy import DEFAULT_POLICY, Policy
from shoal.db.records import DELETE, UPSERT, decode_delete, decode_upsert, encode_delete, encode_upsert
from shoal.db.snapshot import Epoch, Segment, Snapshot, merge_top_k
from shoal.embed import Embedding
from shoal.errors import CorruptIndexError, InvalidArgumentError, ReadOnlyError, StorageError
from shoal.index import Index
from shoal.storage import files
from shoal.storage.wal import WriteAheadLog, salvage_log

FORMAT = manifest_file.FORMAT
#: A full active segment is sealed after a checkpoint beside the writer, and at the latest
#: when it holds this many times ``Policy.seal_rows``.
SEAL_SLACK = 1.25
#: The active segment's vectors and codes in RAM take room for the rows it may reach at once
#: (``Index.row_reserve``: unwritten room holds no memory), up to this many bytes of vectors.
RESERVE_BYTES = 4 << 30
#: Results of at most this many rows are turned into ids in plain Python (``_rows``).
SMALL_RESULT = 256
#: ``stats()["checkpoints"]`` keeps the timings of this many of the last checkpoints.
CHECKPOINT_HISTORY = 32


class Hit(NamedTuple):
    """One search result. ``distance`` is in the metric's convention (smaller is closer);
    ``score`` is the similarity a user of Qdrant or Chroma expects: cosine similarity or inner
    product, and minus the squared distance for l2."""

    id: Key
    distance: float
    metric: str
    payload: dict | None = None
    vector: np.ndarray | None = None
    document: str | None = None

    @property
    def score(self) -> float:
        """Higher is better: cosine similarity or inner product; minus the squared distance
        (l2); the BM25 score (``metric`` "bm25", keyword search); the fused score ("rrf",
        hybrid search)."""
        return 1.0 - self.distance if self.metric in ("cosine", "ip") else -self.distance


#: SQLite's primary result codes that mean the disk failed (READONLY, IOERR, CORRUPT, FULL,
#: CANTOPEN, NOTADB), as opposed to a bug or a bad statement.
_SQLITE_IO = {8, 10, 11, 13, 14, 26}


def _is_io_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 10) & 0xFF) in _SQLITE_IO


def _id_rows(top_u: np.ndarray, top_d: np.ndarray) -> list[list[tuple[int, float]]]:
    """(row id, distance) per query, padding left out: a half of a hybrid search."""
    return [[(u, d) for u, d in zip(us, ds) if u >= 0] for us, ds in zip(top_u.tolist(), top_d.tolist())]


class Collection:
    """A named collection in a ``shoal.Database``; get one with ``db.create_collection`` or
    ``db.get_collection``, not by calling this class."""

    def __init__(self, path: str, *, read_only: bool = False, durability: str = "sync",
                 policy: Policy = DEFAULT_POLICY, recover: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        if durability not in ("sync", "batch"):
            raise InvalidArgumentError(f"durability must be 'sync' or 'batch', got {durability!r}")
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(f"policy must be a shoal.Policy, got {type(policy).__name__}")
        self._sync = durability == "sync"
        self.policy = policy
        self._write_lock = threading.Lock()
        self._calibrating: threading.Thread | None = None
        self._pending: Checkpoint | None = None  # a checkpoint writing its segment
        self._seal_ready = False  # the active segment is full and was saved once since
        self._compacting: Compaction | None = None  # a compaction building its segment
        self._checkpoints: list[dict] = []  # the last CHECKPOINT_HISTORY checkpoints' timings
        self._failed: BaseException | None = None
        self._purgeable: list[int] = []  # log positions up to which retired versions may go
        self._logged_rows = 0
        # Integer keys by row id, for turning search results into ids without SQLite:
        # (keys int64, known uint8) replaced together, grown by copying.
        self._keys: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.uint8))
        config, _ = manifest_file.read(path)
        self.config = config
        self.name = config["name"]
        self.dim = int(config["dim"])
        self.metric = config["metric"]
        self.on_disk = bool(config.get("on_disk", False))
        #: Turns documents and text queries into vectors (``shoal.embed``; set by the database).
        self.embedding: Embedding | None = None
        self._index_metric = "ip" if self.metric == "cosine" else self.metric
        self._store = PayloadStore(os.path.join(path, "payloads.sqlite"), read_only=read_only)
        try:
            if read_only:
                self._open_read_only()
            else:
                self._open_writer(recover)
        except BaseException:
            self._store.close()
            raise

    # ------------------------------------------------------------------ opening
    def _open_writer(self, recover: bool) -> None:
        wal_path = os.path.join(self.path, "wal.log")
        if recover and os.path.exists(wal_path):
            kept, aside = salvage_log(wal_path)
            if aside is not None:
                warnings.warn(f"{wal_path}: damaged in the middle; kept its first {kept} records and "
                              f"moved the damaged log to {aside}", RuntimeWarning, stacklevel=3)
        _, manifest = manifest_file.read(self.path)
        checkpoint = manifest["checkpoint_seq"]
        self._wal = WriteAheadLog(wal_path, first_seq=checkpoint + 1)
        try:
            if self._wal.first_seq > checkpoint + 1:
                raise CorruptIndexError(f"{self.path}: the log starts after the manifest's position")
            if self._wal.last_seq < checkpoint:
                # The log a checkpoint was replacing, with an unsynced tail that a power loss
                # took (``durability="batch"``): the segments hold all of it. Start the next.
                self._wal.close(sync=False)
                files.unlink(wal_path)
                self._wal = WriteAheadLog(wal_path, first_seq=checkpoint + 1)
            try:
                segments = self._load_segments(manifest)
            except FileNotFoundError as exc:
                raise CorruptIndexError(f"{self.path}: a file the manifest names is missing "
                                        f"({exc.filename})") from None
            self._remove_orphans({f for s in segments for f in s.files()})
            self._start(manifest, segments, through=None)
        except BaseException:
            self._wal.close(sync=False)
            raise

    def _open_read_only(self) -> None:
        """The state as of one moment: the payload store's pinned read transaction, and the
        manifest, segments and log records it covers. The writer may checkpoint, compact or
        restart the log meanwhile: then files named here are gone and this tries again."""
        for _ in range(50):
            self._store.pin()
            applied = self._store.applied_seq  # None: a store from before it was recorded
            _, manifest = manifest_file.read(self.path)
            try:
                if applied is not None and manifest["checkpoint_seq"] > applied:
                    raise FileNotFoundError("a checkpoint newer than the pinned store")
                segments = self._load_segments(manifest)
                self._wal = WriteAheadLog(os.path.join(self.path, "wal.log"), read_only=True)
            except FileNotFoundError:
                self._store.unpin()
                continue
            if self._wal.first_seq > manifest["checkpoint_seq"] + 1:
                self._wal.close()
                self._store.unpin()
                continue
            self._start(manifest, segments, through=applied)
            return
        raise CorruptIndexError(f"{self.path}: could not open a consistent read-only view "
                                "(the writer kept replacing its files)")

    def _load_segments(self, manifest: dict) -> list[Segment]:
        segments = []
        for name in manifest["segments"]:
            # On disk, the writer's active segment maps its vectors file writable: it grows.
            grows = not self.read_only and name == manifest.get("active")
            mmap = ("r+" if grows else True) if self.on_disk else False
            index = Index.load(os.path.join(self.path, name), mmap=mmap)
            if index.calibration is None:  # a file from before calibration: once, now
                index.calibrate_if_stale()
            segments.append(Segment.of(name, index))
        if manifest.get("active") is not None and (not segments or segments[-1].file != manifest["active"]):
            raise CorruptIndexError(f"{self.path}: the manifest's active segment is not its last")
        return segments

    def _remove_orphans(self, keep: set[str | None]) -> None:
        for name in os.listdir(self.path):
            if (name.startswith("seg-") and name not in keep) or name.endswith(".tmp"):
                files.unlink(os.path.join(self.path, name))

    def _start(self, manifest: dict, segments: list[Segment], through: int | None) -> None:
        """Take the manifest's state, replay the log records after it (up to ``through``), and
        take the live sets from the payload store."""
        self._checkpoint = int(manifest["checkpoint_seq"])
        self._next_uid = int(manifest["next_uid"])
        self._next_segment = int(manifest["next_segment"])
        self._active: Index | None = None
        if manifest.get("active") is not None:
            self._active = segments[-1].index
            self._active.keep_codes = True
        self._snap = Snapshot(tuple(segments), Epoch())
        # a full active segment saved as such: the next checkpoint seals it
        self._seal_ready = self._active is not None and len(self._active) >= self.policy.seal_rows
        self._remember_keys(*self._store.int_keys())
        applied = self._store.applied_seq
        writer = not self.read_only
        for rec in self._wal.records(after=self._checkpoint):
            if through is not None and rec.seq > through:
                break
            if rec.kind == UPSERT:
                uids, keys, payloads, x, documents = decode_upsert(rec.payload, self.dim)
                if writer and rec.seq > applied:
                    self._store.upsert(keys, uids, payloads, rec.seq, documents)
                self._remember_int_keys(uids, keys)
                self._publish(uids, x, np.zeros(0, np.int64))
                self._next_uid = max(self._next_uid, int(uids.max()) + 1)
            elif rec.kind == DELETE and writer and rec.seq > applied:
                self._store.delete_uids(decode_delete(rec.payload), rec.seq)
        if writer and self._store.applied_seq > max(self._wal.last_seq, self._checkpoint):
            # Records the store applied but the log no longer holds (a repair cut them, or a
            # power loss took the log's unsynced tail but not SQLite's) are undone in the store.
            kept = np.sort(np.concatenate([s.uids for s in self._snap.segments] or [np.zeros(0, np.int64)]))
            self._store.roll_back(max(self._wal.last_seq, self._checkpoint), kept)
        live = self._store.uids_where(for_write=writer)
        segments = []
        for seg in self._snap.segments:
            mask = np.isin(seg.uids, live)
            segments.append(replace(seg, live=mask, dead=int(mask.size - mask.sum())))
        self._snap = Snapshot(tuple(segments), self._snap.epoch)
        if writer:
            self._store.purge(2**62)  # no snapshot of this process shows a retired version
        self._calibrate_opened()

    def _new_index(self) -> Index:
        seed, vectors_file = self._next_uid, None  # (on disk as in RAM: the same graph)
        if self.on_disk:
            vectors_file = os.path.join(self.path, f"seg-{self._next_segment:06d}.f32")
            self._next_segment += 1
        index = Index(self.dim, self._index_metric, m=self.config["m"],
                      ef_construction=self.config["ef_construction"], seed=seed,
                      vectors_file=vectors_file)
        index.keep_codes = True  # it grows by many small batches: keep its construction codes
        index.row_reserve = min(int(self.policy.seal_rows * SEAL_SLACK) + 1, RESERVE_BYTES // (4 * self.dim))
        return index

    # ------------------------------------------------------------------ writes
    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"collection {self.name!r} is open read-only")
        if self._failed is not None:
            raise StorageError(f"collection {self.name!r} refuses writes after an I/O error "
                               f"({self._failed}); reopen it to go on") from None

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """The writer lock, around a write whose failure leaves the collection failed."""
        with self._write_lock:
            self._check_writable()
            try:
                yield
            except BaseException as exc:
                self._failed = exc  # whatever it was, the state may be half written: reopen
                if _is_io_error(exc):
                    raise StorageError(f"collection {self.name!r}: {what} failed with an I/O error "
                                       f"({exc}); it refuses writes until it is reopened") from exc
                raise

    def upsert(self, ids: Any, vectors: Any = None, payloads: Any = None, documents: Any = None) -> None:
        """Insert or replace points: ids (ints or strings), vectors (n, dim), payloads (JSON
        objects or None), documents (strings or None; without vectors, embedded by the
        collection's ``embedding``). Durable when it returns (``durability="sync"``)."""
        self._check_writable()
        prepared = contract.prepare_upsert(ids, vectors, payloads, self.dim, self.metric, documents,
                                           self.embedding, self.name)
        keys, texts, docs = prepared.keys, prepared.payloads, prepared.documents
        if not keys:
            return
        x = prepared.unit()
        with self._writing("upsert"):
            uids = np.arange(self._next_uid, self._next_uid + len(keys), dtype=np.int64)
            self._next_uid += len(keys)  # reserved even if the log write fails
            seq = self._wal.append(UPSERT, encode_upsert(uids, keys, texts, x, docs), sync=self._sync)
            replaced = self._store.upsert(keys, uids, texts, seq, docs)
            self._remember_int_keys(uids, keys)
            self._publish(uids, x, replaced[replaced >= 0])
            self._maintain()

    def delete(self, ids: Any = None, *, filter: dict | None = None) -> int:
        """Delete points by ids or by filter (exactly one); returns how many were deleted."""
        self._check_writable()
        keys, filter = contract.prepare_delete(ids, filter)
        with self._writing("delete"):
            if keys is not None:
                uids = self._store.uids_of(keys, for_write=True)
                uids = uids[uids >= 0]
            else:
                uids = self._store.uids_where(filter, for_write=True)
            if uids.size == 0:
                return 0
            seq = self._wal.append(DELETE, encode_delete(uids), sync=self._sync)
            self._store.delete_uids(uids, seq)
            self._publish(np.zeros(0, np.int64), None, uids)
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

    def _publish(self, uids: np.ndarray, x: np.ndarray | None, killed: np.ndarray) -> None:
        """Link rows ``uids`` into the active segment (started if there is none) and tombstone
        row ids ``killed``, then publish both in one new snapshot."""
        segments = list(self._snap.segments)
        if uids.size:
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
            self._calibrate_later()
            self._logged_rows += len(uids)
            view = self._active.view()
            if old is not None and old.live.shape[0] >= view.count:
                live = old.live  # rows past the old count: no reader of ``old`` looks there
            else:
                live = np.zeros(max(view.vectors.shape[0], view.count), bool)
                if old is not None:
                    live[: old.view.count] = old.live[: old.view.count]
            live[view.count - len(uids): view.count] = True
            file = None if old is None else old.file
            segments.append(Segment(file, self._active, view, live, 0 if old is None else old.dead))
        if killed.size:
            killed = np.sort(killed)
            segments = [seg.without(killed) for seg in segments]
        self._snap = Snapshot(tuple(segments), self._snap.epoch)

    def _calibrate_opened(self) -> None:
        """Calibrate, on a thread of its own, the segments whose default beam is stale as
        opened (grown since their last calibration): their last one serves until then
        (about 4 s per million rows each, which opening used to wait for)."""
        tasks = [task for task in (seg.index.calibration_task() for seg in self._snap.segments) if task]
        if tasks:
            self._calibrating = threading.Thread(target=lambda: [task() for task in tasks], daemon=True,
                                                 name=f"shoal-calibrate-{self.name}")
            self._calibrating.start()

    def _calibrate_later(self) -> None:
        """Keep the active segment's default beam calibrated (readers never pay for it): when
        it is due (grown by a quarter, or searched enough to learn its queries), calibrate it on
        a thread of its own over the segment as it stands, about 0.5 s per 100,000 rows, while
        the writer goes on; one at a time."""
        if self._calibrating is not None and self._calibrating.is_alive():
            return
        task = self._active.calibration_task()
        if task is not None:
            self._calibrating = threading.Thread(target=task, name=f"shoal-calibrate-{self.name}",
                                                 daemon=True)
            self._calibrating.start()

    def _join_calibration(self) -> None:
        """Wait for a calibration running in the background, if any."""
        thread = self._calibrating
        if thread is not None:
            thread.join()

    def _maintain(self) -> None:
        """The automatic policies, after a write (writer lock held): purge retired versions no
        snapshot can show, compact, finish a checkpoint whose segment is written, start one
        (on a thread of its own), seal."""
        self._purge()
        self._finish_compaction(wait=False)
        snap = self._snap
        if self._compacting is None and self.policy.compaction_due(snap.rows, snap.dead):
            self._start_compaction()
            return
        active = 0 if self._active is None else len(self._active)
        overfull = active >= self.policy.seal_rows * SEAL_SLACK
        self._finish_checkpoint(wait=overfull)  # (a full segment must not grow far)
        if self._pending is None and self.policy.checkpoint_due(self._logged_rows, active):
            # A seal makes the writer wait for its checkpoint: first save most of the segment
            # beside the writer, then seal with what was logged meanwhile.
            seal = active >= self.policy.seal_rows and (
                self._seal_ready or overfull or self._logged_rows <= self.policy.checkpoint_min_rows // 4)
            self._checkpoint_locked(seal=seal, background=not seal)

    def _purge(self) -> None:
        through = 0
        while self._purgeable:
            through = max(through, self._purgeable.pop())
        if through:
            self._store.purge(through)

    def _checkpoint_locked(self, seal: bool = False, obsolete: tuple[str, ...] = (),
                           background: bool = False) -> None:
        """Checkpoint (writer lock held), after finishing one in progress. With ``seal`` the
        active segment stays as it is and the next write starts a new one; ``obsolete`` files
        go once the manifest no longer names them. With ``background`` the segment is written
        on a thread of its own and a later write finishes the checkpoint (``_maintain``)."""
        self._finish_checkpoint(wait=True)
        job = self._begin_checkpoint(seal, obsolete)
        if background and job.state is not None:
            job.thread = threading.Thread(target=job.write, args=(self.path,), daemon=True,
                                          name=f"shoal-checkpoint-{self.name}")
            self._pending = job
            job.thread.start()
        else:
            job.write(self.path)
            self._end_checkpoint(job)

    def _begin_checkpoint(self, seal: bool, obsolete: tuple[str, ...]) -> "Checkpoint":
        """The part of a checkpoint that must stop the writer: make the active segment's
        graph whole (``repair``), take its state (its links copied: about 130 bytes a row,
        a memory copy), and make the payload store durable through the last log record."""
        t = time.perf_counter()
        job = Checkpoint(self._wal.last_seq, self._logged_rows, seal, list(obsolete))
        segments = list(self._snap.segments)
        self._seal_ready = not seal and self._active is not None and len(self._active) >= self.policy.seal_rows
        if self._active is not None and (segments[-1].file is None or self._logged_rows):
            self._active.repair()
            job.times["repair"] = time.perf_counter() - t
            job.name = f"seg-{self._next_segment:06d}.shoal"
            self._next_segment += 1
            job.index, job.before = self._active, segments[-1].files()
            # (with the last calibration that finished: the writer does not wait for one)
            job.state = self._active.saved_state(copy=True)
            # the repair may have written links: a fresh view
            segments[-1] = replace(segments[-1], view=self._active.view())
            self._snap = Snapshot(tuple(segments), self._snap.epoch)
        t_store = time.perf_counter()
        self._store.checkpoint(job.seq)
        job.times["store"] = time.perf_counter() - t_store
        job.times["begin"] = time.perf_counter() - t
        return job

    def _finish_checkpoint(self, wait: bool) -> None:
        """Finish the checkpoint in progress if its segment is written (with ``wait``: once
        it is)."""
        job = self._pending
        if job is None or (not wait and job.thread.is_alive()):
            return
        job.thread.join()
        self._pending = None
        self._end_checkpoint(job)

    def _end_checkpoint(self, job: "Checkpoint") -> None:
        """Name the written segment in a new manifest, start the log after the checkpoint's
        last record (keeping the records written since), remove the files no longer named."""
        if job.error is not None:
            raise job.error
        t = time.perf_counter()
        segments = list(self._snap.segments)
        doomed = list(job.doomed)
        if job.name is not None:
            if segments[-1].index is not job.index:  # seals and compactions wait for a checkpoint
                raise RuntimeError("the active segment changed under a checkpoint")
            segments[-1] = replace(segments[-1], file=job.name)
            doomed += sorted(set(job.before) - set(job.index.external_files()))
        if job.seal and self._active is not None:  # it never grows again: give back its slack
            self._active.trim()
            segments[-1] = replace(segments[-1], view=self._active.view())
        active = None if self._active is None or job.seal else segments[-1].file
        manifest_file.write_manifest(self.path, [s.file for s in segments], active, job.seq,
                                     self._next_uid, self._next_segment)
        self._checkpoint = job.seq
        self._snap = Snapshot(tuple(segments), self._snap.epoch)
        if job.seal:
            self._active = None
        t_log = time.perf_counter()
        self._wal.restart_after(job.seq)
        job.times["log"] = time.perf_counter() - t_log
        self._logged_rows -= job.logged
        for name in doomed:
            files.unlink(os.path.join(self.path, name))
        job.times["end"] = time.perf_counter() - t
        self._checkpoints.append({"rows": job.logged, **{k: round(v, 6) for k, v in job.times.items()}})
        del self._checkpoints[:-CHECKPOINT_HISTORY]

    def checkpoint(self) -> None:
        """Save the active segment and restart the log now (``close()`` does it too)."""
        with self._writing("checkpoint"):
            self._checkpoint_locked()

    def create_payload_index(self, field: str) -> None:
        """Index the payload values at dotted path ``field``: filters on it then read a B-tree
        instead of every payload (same results). Idempotent."""
        field = contract.prepare_field(field)
        with self._writing("create_payload_index"):
            self._store.create_index(field)

    def compact(self) -> None:
        """Rebuild all segments into one without deleted or replaced rows (it becomes the
        active segment if nothing was written meanwhile, or is sealed if it is full). Other
        writers go on while it builds; this call returns when it is done."""
        with self._writing("compact"):
            job = self._compacting
        if job is not None:  # one already running: let it end, then compact what is left
            job.thread.join()
        with self._writing("compact"):
            self._finish_compaction(wait=True)
            job = self._start_compaction()
        job.thread.join()
        with self._writing("compact"):
            self._finish_compaction(wait=True)

    def _start_compaction(self) -> "Compaction":
        """Begin a compaction (writer lock held): seal the active segment, so that every
        segment it merges is immutable (but for tombstones), and build the merged segment on
        a thread of its own; writes go on into a new active segment meanwhile."""
        self._finish_checkpoint(wait=True)
        if self._active is not None:
            self._checkpoint_locked(seal=True)
        job = Compaction(self._snap.segments)
        if self._snap.live_count:
            job.index = self._new_index()
            job.name = f"seg-{self._next_segment:06d}.shoal"
            self._next_segment += 1
        job.thread = threading.Thread(target=job.build, args=(self.path,), daemon=True,
                                      name=f"shoal-compact-{self.name}")
        self._compacting = job
        job.thread.start()
        return job

    def _finish_compaction(self, wait: bool) -> None:
        """End the compaction in progress if its segment is built and saved (with ``wait``:
        once it is): it replaces the segments it merged, without the rows deleted or
        replaced meanwhile, in one snapshot; then a checkpoint names it in the manifest."""
        job = self._compacting
        if job is None or (not wait and job.thread.is_alive()):
            return
        job.thread.join()
        self._compacting = None
        if job.error is not None:
            raise job.error
        snap = self._snap
        merged_in = {id(seg.index) for seg in job.inputs}
        now = {id(seg.index): seg for seg in snap.segments}
        new = []
        if job.index is not None:
            # rows live when it began and dead now: deleted or replaced while it built
            killed = [seg.uids[seg.live[: seg.view.count] & ~now[id(seg.index)].live[: seg.view.count]]
                      for seg in job.inputs]
            merged = Segment.of(job.name, job.index)
            new.append(merged.without(np.sort(np.concatenate(killed))) if killed else merged)
        new += [seg for seg in snap.segments if id(seg.index) not in merged_in]
        obsolete = tuple(f for seg in job.inputs for f in seg.files())
        # Versions retired so far can be purged once no snapshot from before this is in use.
        through, purgeable = self._wal.last_seq, self._purgeable
        epoch = snap.epoch.close(lambda: purgeable.append(through))
        seal = False
        if job.index is not None:
            if self._active is None:  # nothing written meanwhile: it grows on as the active one
                self._active = job.index
                seal = len(job.index) >= self.policy.seal_rows
            else:
                job.index.trim()
                new[0] = replace(new[0], view=job.index.view())
        self._snap = Snapshot(tuple(new), epoch)
        del snap, now, job
        self._checkpoint_locked(seal=seal, obsolete=obsolete)

    def flush(self) -> None:
        """Make every write so far durable (only needed with ``durability="batch"``)."""
        if not self.read_only:
            with self._writing("flush"):
                self._wal.sync()

    @property
    def failed(self) -> bool:
        """Whether an I/O error has stopped this handle's writes (reopen the collection)."""
        return self._failed is not None

    def close(self, *, checkpoint: bool = True) -> None:
        """Checkpoint (so that the next open replays nothing) and close the files. A failed
        collection closes without writing anything."""
        try:
            self._join_calibration()  # its result goes into the file below
            if checkpoint and not self.read_only and self._failed is None:
                with self._writing("close"):
                    self._finish_compaction(wait=True)
                    if self._logged_rows or self._pending is not None or \
                            (self._active is not None and self._snap.segments[-1].file is None):
                        full = self._active is not None and len(self._active) >= self.policy.seal_rows
                        self._checkpoint_locked(seal=full)  # (the writer waits anyway)
                    self._wal.sync()
        finally:
            for job in (self._pending, self._compacting):  # a failed collection: let them end
                if job is not None:
                    job.thread.join()
            self._wal.close(sync=False)
            self._store.close()

    # ------------------------------------------------------------------ reads
    # Each read takes the snapshot first, then asks the payload store: every row live in the
    # snapshot was committed there before it was published and is not purged while it lives.
    def count(self, filter: dict | None = None) -> int:
        """Number of points (matching ``filter``)."""
        contract.prepare_filter(filter)
        snap = self._snap
        if filter is None:
            return snap.live_count
        return int(snap.live_among(self._store.uids_where(filter, retired=True)).size)

    def get(self, ids: Any, *, with_vector: bool = True) -> list[dict | None]:
        """``{"id", "payload", "document", "vector"}`` of each id, None where absent."""
        keys = contract.prepare_keys(ids)
        snap = self._snap
        out: list[dict | None] = []
        shown: list[tuple[dict, int]] = []  # (record, the row id of the version shown)
        for key, versions in zip(keys, self._store.versions(keys)):
            rec = None
            for uid, payload in sorted(versions, reverse=True):  # newest first
                found = snap.locate(uid)
                if found is not None:
                    seg, node = found
                    rec = {"id": key, "payload": loads(payload), "document": None}
                    if with_vector:
                        rec["vector"] = seg.view.vectors[node].copy()
                    shown.append((rec, uid))
                    break
            out.append(rec)
        if shown:
            docs = self._store.documents_of(np.array([uid for _, uid in shown], np.int64))
            for rec, uid in shown:
                rec["document"] = docs.get(uid)
        return out

    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[Key], np.ndarray, list[dict]]]:
        """Every point, as batches of (ids, vectors, payloads), from one snapshot (for exports)."""
        batch_size = contract.prepare_batch_size(batch_size)
        snap = self._snap
        for seg in snap.segments:
            nodes = seg.live_nodes()
            for lo in range(0, nodes.size, batch_size):
                part = nodes[lo:lo + batch_size]
                uids = seg.uids[part]
                info = self._store.keys_of(uids, payloads=True, retired=True)
                found = [info[u] for u in uids.tolist()]
                yield [f[0] for f in found], seg.view.vectors[part], [f[1] for f in found]

    def scan_page(self, after: int = -1, limit: int = 1000) -> tuple[list[Key], np.ndarray, list[str], int | None]:
        """One page of a scan by row id, for clients that scan over HTTP: the live points whose
        row id is > ``after``, smallest first, at most ``limit``: (ids, vectors, payload JSON
        texts, the cursor for the next page or None at the end). A point replaced during such a
        scan has a new, larger row id: a client keeps the ids it has seen and skips them."""
        limit = contract.prepare_batch_size(limit)
        snap = self._snap
        parts_u, parts_v = [], []
        for seg in snap.segments:
            uids = seg.uids
            lo = int(np.searchsorted(uids, after, side="right"))
            nodes = lo + np.flatnonzero(seg.live[lo: seg.view.count])[:limit]
            parts_u.append(uids[nodes])
            parts_v.append(seg.view.vectors[nodes])
        uids = np.concatenate(parts_u) if parts_u else np.zeros(0, np.int64)
        order = np.argsort(uids, kind="stable")[:limit]
        uids = uids[order]
        vectors = np.concatenate(parts_v)[order] if parts_v else np.zeros((0, self.dim), np.float32)
        info = self._store.keys_of(uids, payloads=True, as_text=True, retired=True)
        found = [info[u] for u in uids.tolist()]
        more = uids.size == limit
        return [f[0] for f in found], vectors, [f[1] for f in found], int(uids[-1]) if more else None

    def search(self, queries: Any = None, k: int = 10, *, text: Any = None, mode: str | None = None,
               filter: dict | None = None, ef: int | None = None, weights: Any = None,
               with_payload: bool = True, with_vector: bool = False, with_document: bool = False,
               num_threads: int | None = None) -> list[Hit] | list[list[Hit]]:
        """The ``k`` best points for one query (a list of ``Hit``) or for each of a batch (a
        list of lists), among the points matching ``filter``.

        ``queries``: vectors (one (dim,) or a batch (n, dim)); or ``text`` (a string, or a
        list for a batch), embedded by the collection's ``embedding``. ``mode``: "vector"
        (nearest by the metric, the default), "keyword" (BM25 over the documents, text only)
        or "hybrid" (both, fused by reciprocal rank with ``weights`` (vector, keyword), 1 and
        1 by default). ``with_document``: hits carry their document."""
        s = contract.prepare_search(queries, k, ef, filter, self.dim, self.metric, text=text, mode=mode,
                                    weights=weights, embedding=self.embedding, collection=self.name)
        rows = self._search(s, with_payload, with_vector, with_document, num_threads)
        metric, new = contract.hit_metric(s.mode, self.metric), tuple.__new__  # (Hit(...): 2x the cost)
        hits = [[new(Hit, (key, d, metric, payload, vector, doc)) for key, d, payload, vector, doc in row]
                for row in rows]
        return hits[0] if s.one else hits

    def search_rows(self, queries: Any = None, k: int = 10, *, text: Any = None, mode: str | None = None,
                    filter: dict | None = None, ef: int | None = None, weights: Any = None,
                    with_payload: bool = True, with_vector: bool = False, with_document: bool = False,
                    num_threads: int | None = None, payload_text: bool = False) -> list[list[tuple]]:
        """``search`` as plain tuples ``(id, distance, payload, vector, document)``, one list
        per query (a single query is a batch of one): for callers that serialise results (the
        server, shards). With ``payload_text`` payloads stay the JSON text they are stored as."""
        s = contract.prepare_search(queries, k, ef, filter, self.dim, self.metric, text=text, mode=mode,
                                    weights=weights, embedding=self.embedding, collection=self.name)
        return self._search(s, with_payload, with_vector, with_document, num_threads, payload_text)

    def _search(self, s: contract.Search, with_payload: bool, with_vector: bool, with_document: bool,
                num_threads: int | None, payload_text: bool = False) -> list[list[tuple]]:
        snap = self._snap
        want = (with_payload, with_vector, with_document, payload_text)
        if s.mode == "vector":
            return self._rows(snap, *self._nearest(snap, s.queries, s.k, s.ef, s.filter, num_threads), *want)
        if s.mode == "keyword":
            return self._rows(snap, *self._keyword(snap, s.texts, s.k, s.filter), *want)
        # Hybrid: both halves fused on row ids (one per point in a snapshot), and only the
        # fused top k turned into ids, payloads and documents.
        n = contract.hybrid_candidates(s.k)
        halves = [_id_rows(*self._nearest(snap, s.queries, n, s.ef, s.filter, num_threads)),
                  _id_rows(*self._keyword(snap, s.texts, n, s.filter))]
        fused = contract.fuse(*halves, s.k, s.weights)
        top_u = np.full((len(fused), s.k), -1, np.int64)
        top_d = np.full((len(fused), s.k), np.inf)
        for i, row in enumerate(fused):
            top_u[i, :len(row)] = [r[0] for r in row]
            top_d[i, :len(row)] = [r[1] for r in row]
        return self._rows(snap, top_u, top_d, *want)

    def _nearest(self, snap: Snapshot, q: np.ndarray, k: int, ef: int | None, filter: dict | None,
                 num_threads: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Row ids (nq, k) and distances of the nearest live rows matching ``filter``."""
        allowed = None if filter is None else self._store.uids_where(filter, retired=True)
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
        return merge_top_k(parts_u, parts_d, q.shape[0], k)

    def _keyword(self, snap: Snapshot, texts: list[str], k: int,
                 filter: dict | None) -> tuple[np.ndarray, np.ndarray]:
        """Row ids (n, k) and minus the BM25 scores of the live rows whose documents best
        match each text (the full-text index holds every version not yet purged: those this
        snapshot does not show are passed over, asking for more until ``k`` are found)."""
        top_u = np.full((len(texts), k), -1, np.int64)
        top_d = np.full((len(texts), k), np.inf, np.float32)
        for i, text in enumerate(texts):
            limit = max(2 * k, 32)
            while True:
                uids, scores = self._store.keyword(text, limit, filter)
                live = snap.live_mask(uids)
                found = uids[live][:k]
                if found.size == k or uids.size < limit:
                    break
                limit *= 4
            top_u[i, :found.size] = found
            top_d[i, :found.size] = -scores[live][:k]
        return top_u, top_d

    def _rows(self, snap: Snapshot, top_u, top_d, with_payload, with_vector, with_document=False,
              payload_text=False) -> list[list[tuple]]:
        """(id, distance, payload, vector, document) of result row ids: integer keys come from
        memory, string keys, payloads and documents from the payload store."""
        key_of, known = self._keys
        n = known.size
        plain = not (with_payload or with_vector or with_document)
        if top_u.size <= SMALL_RESULT and plain:
            # a query or a few with integer ids: plain Python beats NumPy's per-call cost here
            rows = []
            for us, ds in zip(top_u.tolist(), top_d.tolist()):
                row = []
                for u, d in zip(us, ds):
                    if u < 0:
                        continue
                    if u >= n or not known.item(u):
                        break
                    row.append((key_of.item(u), d, None, None, None))
                else:
                    rows.append(row)
                    continue
                break
            else:
                return rows
        # (np.minimum/np.maximum: np.clip costs 10-15 us on a 10-entry array)
        clipped = np.maximum(np.minimum(top_u, n - 1), 0)
        is_int = (top_u >= 0) & (top_u < n) & (known[clipped] == 1) if n else np.zeros(top_u.shape, bool)
        if plain and is_int.all():  # integer ids only: no SQLite
            keys = key_of[clipped].tolist()
            return [[(key, d, None, None, None) for key, d in zip(ks, ds)]
                    for ks, ds in zip(keys, top_d.tolist())]
        lookup = top_u[(top_u >= 0) & (~is_int | with_payload)]
        info = self._store.keys_of(np.unique(lookup), payloads=with_payload, as_text=payload_text,
                                   retired=True) if lookup.size else {}
        docs = self._store.documents_of(np.unique(top_u[top_u >= 0])) if with_document else {}
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
                    key, payload = info[u]
                row.append((key, d, payload, snap.vector_of(u) if with_vector else None, docs.get(u)))
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
        return {"name": self.name, "count": snap.live_count,
                "segments": [{"file": seg.file, "rows": seg.view.count, "deleted_rows": seg.dead,
                              "active": seg.index is active} for seg in snap.segments],
                "rows": snap.rows,
                "memory_bytes": int(sum(seg.index.stats()["memory_bytes"] for seg in snap.segments)),
                "deleted_rows": snap.dead,
                "log_records": len(self._wal),
                # rows covered and seconds: "begin" and "end" stopped the writer, "write" did not
                "checkpoints": list(self._checkpoints)}
