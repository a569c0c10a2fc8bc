"""Sharded collections on Ray (``pip install 'shoal[ray]'``): the collection API, with each
shard an ordinary shoal collection owned by a Ray actor on its node's disk.

    import ray, shoal, shoal.ray
    ray.init()
    docs = shoal.ray.create_collection("docs", dim=384, shards=8, path="/data/shoal")
    docs.upsert(ids, vectors, payloads)      # routed by a hash of the id, one call per shard
    docs.search(q, k=10, filter={...})       # every shard answers the full k; merged by distance
    docs = shoal.ray.open_collection("docs", path="/data/shoal")   # after a restart

Writes are acknowledged only once every shard they touch has appended them to its
write-ahead log (fsynced). Actors restart after a crash (``max_restarts``) and reopen their
shard from disk; the driver retries calls that failed while an actor was down. A shard that
stays down makes ``search`` raise ``ShardUnavailableError``, or, with ``allow_partial=True``,
return what the others found with ``results.missing_shards`` naming the absent ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import numpy as np
import ray

from shoal import _validate, errors
from shoal.db import contract
from shoal.db.collection import Hit
from shoal.db.manifest import write_json
from shoal.db.payloads import Key, loads
from shoal.embed import Embedding
from shoal.index import DEFAULT_EF_CONSTRUCTION
from shoal.storage import files

#: How often and how long the driver retries a call whose actor died (it restarts meanwhile).
RETRIES = 8
RETRY_WAIT_S = 0.5
#: How long creating or opening a collection waits for its shards' actors to start.
START_TIMEOUT_S = 120.0


class ShardUnavailableError(errors.ShoalError):
    """A shard's actor stayed down through the driver's retries."""

    http_status = 503


class SearchResults(list):
    """Search results (a list as ``Collection.search`` returns) with ``missing_shards``: the
    shards that did not answer (only ever non-empty with ``allow_partial=True``)."""

    missing_shards: list[int]


_MASK = (1 << 64) - 1


def _mix64(v: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 (wrapping arithmetic)."""
    v = (v ^ (v >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    v = (v ^ (v >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return v ^ (v >> np.uint64(31))


def shards_of(keys: list[Key], shards: int) -> np.ndarray:
    """The shard of each key: a stable hash, the same in every process and run (integer keys
    by splitmix64, string keys by BLAKE2b)."""
    out = np.empty(len(keys), np.int64)
    ints = np.fromiter((type(k) is int for k in keys), bool, len(keys))
    if ints.any():
        vals = np.array([k for k in keys if type(k) is int], np.int64).view(np.uint64)
        with np.errstate(over="ignore"):
            out[ints] = (_mix64(vals) % np.uint64(shards)).astype(np.int64)
    for pos in np.flatnonzero(~ints):
        digest = hashlib.blake2b(str(keys[pos]).encode(), digest_size=8).digest()
        out[pos] = int.from_bytes(digest, "little") % shards
    return out


def shard_of(key: Key, shards: int) -> int:
    """The shard of one key (see ``shards_of``)."""
    return int(shards_of([key], shards)[0])


class _Shard:
    """A Ray actor: one shard, an ordinary collection in ``path`` (a database directory)."""

    def __init__(self, path: str, name: str, config: dict[str, Any]) -> None:
        from shoal.db.database import open_database

        self.db = open_database(path)
        if name in self.db.list_collections():
            self.col = self.db.get_collection(name)
        else:
            self.col = self.db.create_collection(name, config["dim"], config["metric"], m=config["m"],
                                                 ef_construction=config["ef_construction"],
                                                 on_disk=config.get("on_disk", False))

    def pid(self) -> int:
        return os.getpid()

    def upsert(self, ids: list, vectors: np.ndarray, payloads: list, documents: list | None = None) -> int:
        self.col.upsert(ids, vectors, payloads, documents)
        return len(ids)

    def delete(self, ids: list | None, flt: dict | None) -> int:
        return self.col.delete(ids, filter=flt)

    def count(self, flt: dict | None) -> int:
        return self.col.count(flt)

    def get(self, ids: list, with_vector: bool) -> list:
        return self.col.get(ids, with_vector=with_vector)

    def search_rows(self, queries: np.ndarray | None, k: int, flt: dict | None, ef: int | None,
                    with_payload: bool, with_vector: bool, texts: list[str] | None = None,
                    mode: str = "vector", with_document: bool = False) -> list:
        return self.col.search_rows(queries, k, text=texts, mode=mode, filter=flt, ef=ef,
                                    with_payload=with_payload, with_vector=with_vector,
                                    with_document=with_document)

    def timed(self, method: str, *args: Any) -> tuple[Any, float]:
        """(result, seconds inside this actor) of one of its methods (for cost models)."""
        t = time.perf_counter()
        out = getattr(self, method)(*args)
        return out, time.perf_counter() - t

    def compact(self) -> None:
        self.col.compact()

    def checkpoint(self) -> None:
        self.col.checkpoint()

    def flush(self) -> None:
        self.col.flush()

    def create_payload_index(self, field: str) -> None:
        self.col.create_payload_index(field)

    def scan_page(self, after: int, limit: int) -> tuple:
        return self.col.scan_page(after, limit)

    def stats(self) -> dict:
        return self.col.stats()

    def close(self) -> None:
        self.db.close()


def _meta_path(path: str, name: str) -> str:
    return os.path.join(path, name, "sharded.json")


def create_collection(name: str, dim: int | None = None, metric: str = "cosine", *, shards: int, path: str,
                      m: int = 16, ef_construction: int = DEFAULT_EF_CONSTRUCTION, on_disk: bool = False,
                      embedding: Any = None, max_restarts: int = -1, num_cpus: float = 0,
                      threads: int | None = None,
                      retries: tuple[int, float] = (RETRIES, RETRY_WAIT_S)) -> "ShardedCollection":
    """Create a collection of ``shards`` shards under ``path``/``name`` (each shard in
    ``shard-NNN``, on the disk of the node its actor runs on). ``threads``: numba threads per
    shard (default: the node's cores). ``on_disk`` and ``embedding`` as
    ``shoal.Database.create_collection`` (texts are embedded in the driver)."""
    emb, dim = contract.prepare_embedding(embedding, dim)
    config = {**contract.prepare_create(name, dim, metric, m, ef_construction, on_disk, emb),
              "shards": _validate.positive_int(shards, "shards")}
    meta = _meta_path(os.fspath(path), name)
    if os.path.exists(meta):
        raise errors.CollectionExistsError(f"sharded collection {name!r} already exists at {path}")
    if not os.path.isdir(os.path.dirname(meta)):
        files.makedirs(os.path.dirname(meta))
        files.fsync_directory(os.path.dirname(os.path.dirname(meta)))
    write_json(meta, config)  # temp, fsync, rename, fsync of the directory
    return ShardedCollection(os.fspath(path), config, max_restarts=max_restarts, num_cpus=num_cpus,
                             threads=threads, retries=retries, embedding=emb)


def open_collection(name: str, *, path: str, embedding: Any = None, max_restarts: int = -1,
                    num_cpus: float = 0, threads: int | None = None,
                    retries: tuple[int, float] = (RETRIES, RETRY_WAIT_S)) -> "ShardedCollection":
    """Reattach to a sharded collection (after a restart of the driver or of Ray);
    ``embedding`` as ``shoal.Database.get_collection``."""
    contract.prepare_name(name)
    try:
        with open(_meta_path(os.fspath(path), name), encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise errors.CollectionNotFoundError(f"no sharded collection {name!r} at {path}") from None
    return ShardedCollection(os.fspath(path), config, max_restarts=max_restarts, num_cpus=num_cpus,
                             threads=threads, retries=retries,
                             embedding=contract.collection_embedding(config, embedding))


class ShardedCollection:
    """A collection split over Ray actors by a hash of the id; ``shoal.Collection``'s methods."""

    def __init__(self, path: str, config: dict[str, Any], *, max_restarts: int, num_cpus: float,
                 threads: int | None = None, retries: tuple[int, float] = (RETRIES, RETRY_WAIT_S),
                 embedding: Embedding | None = None) -> None:
        self.path = path
        #: Turns documents and text queries into vectors, in the driver (``shoal.embed``).
        self.embedding = embedding
        self._retries, self._retry_wait_s = int(retries[0]), float(retries[1])
        self.config = config
        self.name = config["name"]
        self.dim = int(config["dim"])
        self.metric = config["metric"]
        self.shards = int(config["shards"])
        # num_cpus=0 by default: an actor would hold its CPUs for its whole life, and shards
        # spend most of it waiting; SPREAD places them on different nodes when there are some.
        env = {} if threads is None else {"env_vars": {
            "NUMBA_NUM_THREADS": str(_validate.positive_int(threads, "threads")),
            "OPENBLAS_NUM_THREADS": "1"}}
        actor = ray.remote(_Shard).options(max_restarts=max_restarts, max_task_retries=0,
                                           num_cpus=num_cpus, scheduling_strategy="SPREAD",
                                           runtime_env=env)
        self._actors = [actor.remote(os.path.join(path, self.name, f"shard-{i:03d}"), self.name, config)
                        for i in range(self.shards)]
        ready, waiting = ray.wait([a.pid.remote() for a in self._actors], num_returns=self.shards,
                                  timeout=START_TIMEOUT_S)
        if waiting:
            for a in self._actors:
                ray.kill(a)
            raise ShardUnavailableError(
                f"{len(waiting)} of {self.shards} shards of {self.name!r} did not start within "
                f"{START_TIMEOUT_S:.0f} s (not enough resources for num_cpus={num_cpus}?)")
        ray.get(ready)  # raises a shard's own error (a damaged shard, say)

    # ------------------------------------------------------------------ plumbing
    def _call(self, shard: int, method: str, *args: Any) -> Any:
        """One call, retried while the shard's actor restarts."""
        return self._gather({shard: (method, args)})[shard]

    def _call_all(self, method: str, *args: Any) -> list[Any]:
        got = self._gather({i: (method, args) for i in range(self.shards)})
        return [got[i] for i in range(self.shards)]

    def _gather(self, calls: dict[int, tuple[str, tuple]], allow_partial: bool = False) -> dict[int, Any]:
        """Send ``calls`` {shard: (method, args)} at once; retry the ones that failed because an
        actor died; raise ``ShardUnavailableError`` (or, with ``allow_partial``, leave them out)."""
        results: dict[int, Any] = {}
        pending = dict(calls)
        for attempt in range(self._retries + 1):
            refs = {i: getattr(self._actors[i], m).remote(*a) for i, (m, a) in pending.items()}
            failed = {}
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    failed[i] = pending[i]
                except ray.exceptions.RayTaskError as exc:  # the shard raised: re-raise its error
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    raise cause from None
            if not failed:
                return results
            pending = failed
            if attempt < self._retries:
                time.sleep(self._retry_wait_s * (attempt + 1))
        if allow_partial:
            return results
        raise ShardUnavailableError(f"shards {sorted(pending)} of {self.name!r} did not answer")

    def _route(self, keys: list[Key]) -> dict[int, list[int]]:
        """{shard: positions of its keys}."""
        where = shards_of(keys, self.shards)
        order = np.argsort(where, kind="stable")
        bounds = np.searchsorted(where[order], np.arange(self.shards + 1))
        return {s: order[bounds[s]:bounds[s + 1]].tolist() for s in range(self.shards)
                if bounds[s + 1] > bounds[s]}

    def _upsert_calls(self, ids: Any, vectors: Any, payloads: Any,
                      documents: Any = None) -> dict[int, tuple[str, tuple]]:
        prepared = contract.prepare_upsert(ids, vectors, payloads, self.dim, self.metric, documents,
                                           self.embedding, self.name)
        keys, x, docs = prepared.keys, prepared.vectors, prepared.documents
        pays = [None] * len(keys) if payloads is None else list(payloads)
        return {s: ("upsert", ([keys[p] for p in pos], x[pos], [pays[p] for p in pos],
                               None if docs is None else [docs[p] for p in pos]))
                for s, pos in self._route(keys).items()}

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Any, vectors: Any = None, payloads: Any = None, documents: Any = None) -> None:
        """Insert or replace points; returns once every shard has them in its fsynced log."""
        self._gather(self._upsert_calls(ids, vectors, payloads, documents))

    def import_arrays(self, vectors: Any, ids: Any = None, payloads: Any = None, *,
                      batch_size: int = 10_000, progress: bool = True) -> int:
        """Bulk import: batches go to all shards at once, which build in parallel."""
        x = np.asarray(vectors)
        n = x.shape[0]
        keys = list(range(n)) if ids is None else contract.prepare_keys(ids)
        if len(keys) != n:
            raise errors.InvalidArgumentError(f"ids has {len(keys)} entries but vectors has {n} rows")
        batch_size = _validate.positive_int(batch_size, "batch_size")
        bar = None
        if progress:
            from rich.progress import Progress

            bar = Progress(transient=True)
            bar.start()
            task = bar.add_task(f"import into {self.name}", total=n)
        # Two batches in flight: a shard that finishes its part early (or one that checkpoints)
        # does not leave the others idle. A batch is re-sent whole if a shard died meanwhile
        # (upserts are idempotent).
        in_flight: list[tuple[dict, list, int]] = []

        def settle(calls: dict, refs: list, size: int) -> None:
            try:
                ray.get(refs)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                self._gather(calls)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                raise cause from None
            if bar is not None:
                bar.update(task, advance=size)

        try:
            for lo in range(0, n, batch_size):
                hi = min(lo + batch_size, n)
                calls = self._upsert_calls(keys[lo:hi], x[lo:hi], None if payloads is None else payloads[lo:hi])
                refs = [getattr(self._actors[s], m).remote(*a) for s, (m, a) in calls.items()]
                in_flight.append((calls, refs, hi - lo))
                if len(in_flight) > 2:
                    settle(*in_flight.pop(0))
            while in_flight:
                settle(*in_flight.pop(0))
        finally:
            if bar is not None:
                bar.stop()
        return n

    def import_parquet(self, file: str, *, id_field: str = "id", vector_field: str = "vector",
                       batch_size: int = 10_000) -> int:
        """Bulk import from Parquet (a vector column, an optional id column, payload columns)."""
        from pathlib import Path

        from shoal.readers import batches_parquet

        total, batches = batches_parquet(Path(file), batch_size, id_field, vector_field)
        from rich.progress import Progress

        done = 0
        with Progress(transient=True) as bar:
            task = bar.add_task(f"import {Path(file).name} into {self.name}", total=total)
            for keys, x, pays in batches:
                self.upsert(keys, x, pays)
                done += len(keys)
                bar.update(task, advance=len(keys))
        return done

    def delete(self, ids: Any = None, *, filter: dict | None = None) -> int:
        keys, filter = contract.prepare_delete(ids, filter)
        if keys is not None:
            calls = {s: ("delete", ([keys[p] for p in pos], None)) for s, pos in self._route(keys).items()}
            return int(sum(self._gather(calls).values()))
        return int(sum(self._call_all("delete", None, filter)))

    def compact(self) -> None:
        self._call_all("compact")

    def checkpoint(self) -> None:
        self._call_all("checkpoint")

    def flush(self) -> None:
        self._call_all("flush")

    def create_payload_index(self, field: str) -> None:
        self._call_all("create_payload_index", contract.prepare_field(field))

    def scan(self, batch_size: int = 1000):
        """Every point, shard after shard, as batches of (ids, vectors, payloads); within a
        shard as ``RemoteCollection.scan`` (each point once, old or new version)."""
        for shard in range(self.shards):
            def fetch(after: int, limit: int, shard: int = shard):
                keys, vectors, texts, cursor = self._call(shard, "scan_page", after, limit)
                return keys, vectors, [loads(t) for t in texts], cursor

            yield from contract.scan_pages(fetch, batch_size)

    # ------------------------------------------------------------------ reads
    def count(self, filter: dict | None = None) -> int:
        contract.prepare_filter(filter)
        return int(sum(self._call_all("count", filter)))

    def __len__(self) -> int:
        return self.count()

    def get(self, ids: Any, *, with_vector: bool = True) -> list[dict | None]:
        keys = contract.prepare_keys(ids)
        routed = self._route(keys)
        got = self._gather({s: ("get", ([keys[p] for p in pos], with_vector)) for s, pos in routed.items()})
        out: list[dict | None] = [None] * len(keys)
        for s, pos in routed.items():
            for p, rec in zip(pos, got[s]):
                out[p] = rec
        return out

    def search(self, queries: Any = None, k: int = 10, *, text: Any = None, mode: str | None = None,
               filter: dict | None = None, ef: int | None = None, weights: Any = None,
               with_payload: bool = True, with_vector: bool = False, with_document: bool = False,
               num_threads: int | None = None, allow_partial: bool = False) -> SearchResults:
        """Every shard answers the full ``k`` for the whole batch (one call each); the lists are
        merged by distance. Hybrid: each shard answers both halves, merged half by half here
        and fused (``contract.fuse``)."""
        s = contract.prepare_search(queries, k, ef, filter, self.dim, self.metric, text=text, mode=mode,
                                    weights=weights, embedding=self.embedding, collection=self.name)
        missing: set[int] = set()

        def half(mode: str, k: int) -> list[list[tuple]]:
            args = (s.queries if mode == "vector" else None, k, s.filter, s.ef, with_payload, with_vector,
                    s.texts if mode == "keyword" else None, mode, with_document)
            got = self._gather({i: ("search_rows", args) for i in range(self.shards)}, allow_partial)
            missing.update(set(range(self.shards)) - set(got))
            nq = len(s.texts) if s.queries is None else s.queries.shape[0]
            return [sorted((hit for part in got.values() for hit in part[r]), key=lambda h: h[1])[:k]
                    for r in range(nq)]

        if s.mode == "hybrid":
            n = contract.hybrid_candidates(s.k)
            rows = contract.fuse(half("vector", n), half("keyword", n), s.k, s.weights)
        else:
            rows = half(s.mode, s.k)
        metric = contract.hit_metric(s.mode, self.metric)
        hits = [[Hit(key, d, metric, payload, vector, doc) for key, d, payload, vector, doc in row] for row in rows]
        out = SearchResults(hits[0] if s.one else hits)
        out.missing_shards = sorted(missing)
        return out

    def stats(self) -> dict[str, Any]:
        per = self._call_all("stats")
        return {"name": self.name, "shards": self.shards, "count": sum(s["count"] for s in per),
                "per_shard": per}

    def actor_pids(self) -> list[int]:
        """Process ids of the shard actors (for operations and tests)."""
        return self._call_all("pid")

    def close(self) -> None:
        """Close the shards' databases and stop their actors."""
        try:
            self._call_all("close")
        finally:
            for a in self._actors:
                ray.kill(a)

    def __repr__(self) -> str:
        return f"ShardedCollection({self.name!r}, dim={self.dim}, shards={self.shards})"
