"""``Index``: an in-memory HNSW graph index laid out as structure of arrays.

State (``capacity`` rows allocated, ``count`` used; capacity grows geometrically):

- ``vectors``   float32 (capacity, dim): the stored rows (unit length under cosine);
- ``ids``       int64 (capacity): the user's id of each node (internal row number);
- ``levels``    int8 (capacity): the top level of each node;
- ``links0``    int32 (capacity, 2*m), ``deg0`` int32 (capacity): level-0 neighbours;
- ``up_offset`` int32 (capacity): first row in the upper-level pool of a node with level >= 1
  (-1 otherwise); its links on level l are pool row ``up_offset + l - 1``;
- ``links_up``  int32 (pool, m), ``deg_up`` int32 (pool): the upper-level pool;
- ``codes``     uint8 (capacity, dim) with ``code_lo``/``code_step`` float32 (dim,): the rows as
  SQ8 codes (``quantize="sq8"``, the default; ``shoal.kernels.quantize``). Searches walk the
  graph on codes (a quarter of the bytes per step) and rank the beam they end with by the
  float32 rows, so the distances returned are exact.

The float32 rows live in RAM, or (``vectors_file=``, or ``load(mmap=...)``) in a file mapped
into memory: RAM then holds the codes and links (about a third of the bytes at 384-d), and
the operating system pages rows in as searches rank their beams by them.

Distances are returned in the metric's own convention: ``cosine`` -> ``1 - cos``, ``ip`` ->
``1 - <q, x>``, ``l2`` -> squared Euclidean distance. Smaller is closer for all three.
"""

from __future__ import annotations

import copy as copy_module
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numba
import numpy as np

from shoal import _blas, _validate
from shoal.errors import CorruptIndexError, DuplicateIdError, IdNotFoundError, InvalidArgumentError
from shoal.kernels.build import (
    link_batch,
    mark_reachable,
    merge_reverse,
    nearest_peers,
    reverse_keys,
    unlinked_nodes,
    unreachable_nodes,
)
from shoal.datasets import recall_per_query
from shoal.exact import exact_top_k
from shoal.kernels.distance import distances_to_rows
from shoal.kernels.quantize import (
    code_params,
    column_ranges,
    encode_sq8,
    int8_codes,
    max_abs_deviation,
    quantize_rows,
    sq8_params,
)
from shoal.kernels.search import labels_of, search_batch, search_serial
from shoal.storage import files
from shoal.storage.rows import RowFile, map_rows

MAX_LEVEL = 31
#: ef_construction when the caller gives none (see the class docstring).
DEFAULT_EF_CONSTRUCTION = 48
#: Search beam width when the caller gives none and the index is not calibrated (too small).
DEFAULT_EF = 40
#: Calibration (``Index.calibrate``): the recall@10 the default beam must reach, ...
CALIBRATION_TARGET = 0.95
#: ... measured on this many of the index's own rows, each searched with itself held out ...
CALIBRATION_SAMPLE = 100
#: ... for each of these beams up to the first that reaches the target (larger ones when a
#: search asks for more recall: ``search(recall=)``).
CALIBRATION_EFS = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512)
#: An index of at least CALIBRATION_MIN rows is calibrated again by the first search without
#: ``ef`` (or ``save``) once it has grown by CALIBRATION_GROWTH since its last calibration.
CALIBRATION_MIN = 1_000
CALIBRATION_GROWTH = 1.25
#: An index remembers the last QUERY_MEMORY queries it was asked; once it has seen
#: CALIBRATION_SAMPLE of them, they replace its own rows as the calibration's queries (the
#: next calibration comes at once if the last one used rows). Queries unlike the rows (a
#: question against passages, a point between clusters of near-duplicates) need a wider beam
#: than rows do: on a million rows made from WordNet, rows said ef=64 where the real queries
#: got recall 0.899 at it.
QUERY_MEMORY = 256
#: A batch holds at most this fraction of the index being built (ParlayANN's default).
BATCH_FRACTION = 0.02
#: ... but at least this many nodes once the graph is large enough, for parallel work.
MIN_BATCH = 256
REPAIR_PASSES = 64
#: Build on int8 codes when the batch is at least 1/CODES_MIN_SHARE of the index ...
CODES_MIN_SHARE = 8
#: ... and rows are long enough for memory traffic to dominate.
CODES_MIN_DIM = 32
#: Filtered search scans the allowed set exactly when allowed**2 * EXACT_COST <=
#: GRAPH_COST * ef * count: an exact scan costs one BLAS distance per allowed row (about
#: 8 ns at 384-d), a graph search under a filter of selectivity s costs about ef / s units of
#: 0.5-4 us (measured on WordNet with part-of-speech and lexicographer-file filters). On 116K
#: vectors that scans sets up to about 37% of the index; on 10M, up to about 4%.
EXACT_COST = 1.0
GRAPH_COST = 250.0
#: ``add(repair=False)`` still runs the full reachability pass while the index holds at most
#: this many times the rows added (the pass then costs little next to the insertion).
FULL_REPAIR_RATIO = 20
#: When an add spans at most PEER_SPAN batches, its rows cannot be spread out by the random
#: order, and each new node is also offered its PEERS nearest nodes of the same batch, found
#: by BLAS in runs of PEER_BLOCK consecutive rows (a user's batch of related rows).
PEER_SPAN = 4
PEERS = 16
PEER_BLOCK = 512
#: Search codes cover each column's range widened by this fraction on both sides, so that the
#: rows of later adds rarely fall outside it (then every row is coded again).
CODE_MARGIN = 1 / 16
QUANTIZERS = ("sq8", None)
_NO_FILTER = np.zeros(0, np.uint8)
_NO_PEERS = np.zeros((0, 0), np.int32)
_NO_SKIP = np.zeros(0, np.int32)


def _recall_low(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean recall@k of a sample of queries less its standard error: what a calibration
    compares with its target, so that picking the smallest beam whose noisy measurement
    passes does not pick one that falls short on the queries not in the sample."""
    per = recall_per_query(found, truth, k)
    return float(per.mean() - (per.std(ddof=1) / np.sqrt(per.size) if per.size > 1 else 0.0))


class GraphView(NamedTuple):
    """A searchable state of a growing ``Index``: its arrays and counts at one moment.

    The writer only appends rows past ``count``, rewrites link rows in place, and moves to
    new arrays when it grows, so a search over a view stays valid while the index grows:
    it skips links to nodes at or past ``count``, and a link row it reads while the writer
    rewrites it holds valid nodes, old or new (the search may take a slightly different
    path, never a wrong one)."""

    vectors: np.ndarray
    ids: np.ndarray
    links0: np.ndarray
    deg0: np.ndarray
    links_up: np.ndarray
    deg_up: np.ndarray
    up_offset: np.ndarray
    entry: int
    top_level: int
    count: int
    codes: np.ndarray       # uint8 (capacity, dim), or (0, dim) without codes
    code_lo: np.ndarray
    code_step: np.ndarray


class Index:
    """An HNSW index (Malkov & Yashunin, 2018) over float32 vectors with int64 ids.

    Parameters
    ----------
    dim : int
        Dimension of the vectors.
    metric : {"cosine", "ip", "l2"}
        ``cosine`` normalises vectors at insert and searches by inner product.
    m : int
        Links per node on the upper levels; level 0 keeps up to ``2*m`` (the paper's M).
    ef_construction : int
        Beam width of the searches that pick a new node's neighbours (the paper's
        efConstruction). The default 48 was chosen by a sweep over two real datasets (README,
        "Choosing ef_construction"): 40 built faster but left the second set's graph too
        sparse (recall@10 0.95 needed ef about 112 there), 64 searched a little faster and
        built a third slower.
    seed : int
        Seeds the level draws; the same seed and data give the same graph whatever the
        number of threads.
    quantize : "sq8" or None
        ``"sq8"`` (default) also keeps each row as one byte per dimension (25% more memory)
        and searches walk the graph on those codes, then rank what they found by the
        float32 rows: about 1.6x the queries per second at the same recall. ``None`` walks the
        float32 rows.
    vectors_file : path, optional
        Keep the float32 rows in this file (created or overwritten; raw rows, memory-mapped
        and lengthened as rows are added) instead of RAM: RAM holds the codes and links, and
        searches read rows from it only to rank their beams. For indexes larger than RAM.
    """

    def __init__(self, dim: int, metric: str = "cosine", *, m: int = 16,
                 ef_construction: int = DEFAULT_EF_CONSTRUCTION, seed: int = 0, quantize: str | None = "sq8",
                 vectors_file: str | os.PathLike | None = None) -> None:
        self._dim = _validate.positive_int(dim, "dim")
        self._metric_code = _validate.metric_code(metric)
        self._metric = metric
        self._m = _validate.positive_int(m, "m", minimum=2)
        self._ef_construction = _validate.positive_int(ef_construction, "ef_construction")
        self._seed = _validate.positive_int(seed, "seed", minimum=0)
        if quantize not in QUANTIZERS:
            raise InvalidArgumentError(f"quantize must be one of {QUANTIZERS}, got {quantize!r}")
        self._quantize = quantize
        #: Calibration (see ``calibrate``): {"count", "k", "target", "efs", "recall",
        #: "default_ef", "source"}, or None.
        self._calibration: dict[str, Any] | None = None
        #: The last QUERY_MEMORY queries searched (a ring; rows are prepared queries) and how
        #: many were searched in all.
        self._recent = np.empty((0, self._dim), np.float32)
        self._recent_seen = 0
        self._cal_set = None  # the last calibration's (queries, truth, skip, source)
        self._code_lo = np.zeros(self._dim, np.float32)
        self._code_step = np.ones(self._dim, np.float32)
        self._rng = np.random.default_rng(self._seed)
        self._count = 0
        self._pool_count = 0
        self._entry = -1
        self._top_level = -1
        self._allocate(0, 0)
        self._sorted_ids = np.empty(0, np.int64)
        self._sorted_nodes = np.empty(0, np.int32)
        self._scratch: list[tuple[np.ndarray, np.ndarray]] = []
        self.last_add_stats: dict[str, Any] = {}
        #: Keep the int8 construction codes between adds (25% more memory) instead of coding
        #: the index for each large batch: for an index that grows by many small batches.
        self.keep_codes = False
        #: Rows of room the vectors and codes in RAM take at once when they must grow (0:
        #: they double like the rest); see ``_reserve``.
        self.row_reserve = 0
        self._codes: np.ndarray | None = None
        self._code_params: tuple[np.ndarray, np.float32] | None = None
        #: Where the float32 rows are mapped from (None: RAM); see ``vectors_file``.
        self._vectors_file = None if vectors_file is None else os.path.abspath(os.fspath(vectors_file))
        if self._vectors_file is not None and os.path.exists(self._vectors_file):
            with open(self._vectors_file, "r+b") as f:  # its rows are this index's
                files.truncate(f, 0)
        #: Sections saved in row files of their own (``save(split=True)``): name -> RowFile,
        #: and the code parameters the codes file was written with.
        self._row_files: dict[str, RowFile] = {}
        self._saved_code_lo: np.ndarray | None = None

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def m(self) -> int:
        return self._m

    @property
    def ef_construction(self) -> int:
        return self._ef_construction

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def quantize(self) -> str | None:
        return self._quantize

    def __len__(self) -> int:
        return self._count

    def __contains__(self, id_: object) -> bool:
        if isinstance(id_, (bool, np.bool_)) or not isinstance(id_, (int, np.integer)):
            return False
        if not np.iinfo(np.int64).min <= int(id_) <= np.iinfo(np.int64).max:
            return False
        return bool(self._lookup(np.array([id_], np.int64))[0] >= 0)

    def __repr__(self) -> str:
        return (f"Index(dim={self._dim}, metric={self._metric!r}, m={self._m}, "
                f"ef_construction={self._ef_construction}, count={self._count})")

    # ------------------------------------------------------------------ storage arrays
    def _allocate(self, capacity: int, pool: int) -> None:
        width = 2 * self._m
        self._vectors = np.zeros((capacity, self._dim), np.float32)
        self._ids = np.zeros(capacity, np.int64)
        self._levels = np.zeros(capacity, np.int8)
        self._links0 = np.full((capacity, width), -1, np.int32)
        self._deg0 = np.zeros(capacity, np.int32)
        self._up_offset = np.full(capacity, -1, np.int32)
        self._links_up = np.full((pool, self._m), -1, np.int32)
        self._deg_up = np.zeros(pool, np.int32)
        self._sq_codes = np.zeros((capacity if self._quantize else 0, self._dim), np.uint8)

    @staticmethod
    def _grown(arr: np.ndarray, rows: int, fill: int | None) -> np.ndarray:
        """``arr`` copied into ``rows`` rows; the new rows hold ``fill`` (None: left unwritten,
        so their pages stay unmapped until used)."""
        out = np.empty((rows,) + arr.shape[1:], arr.dtype)
        out[: arr.shape[0]] = arr
        if fill is not None:
            out[arr.shape[0]:] = fill
        return out

    def _reserve(self, count: int, pool: int) -> None:
        """Make room for ``count`` nodes and ``pool`` upper-level rows (capacity doubles).

        Growth copies into new arrays and never writes the old ones again, so a reader
        holding a ``GraphView`` of the old arrays keeps a consistent graph. The vectors and
        codes in RAM, most of the bytes, grow at once to ``row_reserve`` rows when that is
        more: their new rows are left unwritten (no memory until used), so an index that
        knows how far it will grow (a collection's active segment) copies them once, not at
        every doubling (at 512,000 rows of 384-d that copy stopped the writer 1.2 s)."""
        cap = self._links0.shape[0]
        if count > cap:
            new = max(count, 2 * cap, 64)
            room = max(new, self.row_reserve)
            if self._vectors.shape[0] < new:  # (never less room than the links have)
                if self._vectors_file is not None:  # rows below count are in the file already
                    self._vectors = map_rows(self._vectors_file, np.float32, self._dim, new)
                else:
                    self._vectors = self._grown(self._vectors, room, None)
            if self._quantize and self._sq_codes.shape[0] < new:
                self._sq_codes = self._grown(self._sq_codes, room, None)
            self._ids = self._grown(self._ids, new, 0)
            self._levels = self._grown(self._levels, new, 0)
            self._links0 = self._grown(self._links0, new, -1)
            self._deg0 = self._grown(self._deg0, new, 0)
            self._up_offset = self._grown(self._up_offset, new, -1)
            self._scratch = []
        if pool > self._links_up.shape[0]:
            cap = self._links_up.shape[0]
            new = max(pool, 2 * cap, 16)
            self._links_up = self._grown(self._links_up, new, -1)
            self._deg_up = self._grown(self._deg_up, new, 0)

    def _take_scratch(self, chunks: int, nodes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-worker visited tags (chunks, >= nodes) uint16, taken from a pool (list pop and
        append are atomic, so searches in several threads never share one)."""
        cap = max(self._links0.shape[0], nodes or 0)
        try:
            visited, tags = self._scratch.pop()
            if visited.shape[0] == chunks and cap <= visited.shape[1] <= 2 * cap:
                return visited, tags
        except IndexError:
            pass
        return np.zeros((chunks, cap), np.uint16), np.zeros(chunks, np.uint16)

    # ------------------------------------------------------------------ ids
    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        """Nodes of ``ids`` (int64), -1 where absent."""
        pos = np.searchsorted(self._sorted_ids, ids)
        pos = np.minimum(pos, max(len(self._sorted_ids) - 1, 0))
        if len(self._sorted_ids) == 0:
            return np.full(len(ids), -1, np.int32)
        found = self._sorted_ids[pos] == ids
        return np.where(found, self._sorted_nodes[pos], -1).astype(np.int32)

    def _index_ids(self, start: int) -> None:
        """Merge the ids of nodes ``start .. count-1`` into the sorted lookup."""
        new_ids = self._ids[start:self._count]
        if (len(self._sorted_ids) == 0 or new_ids[0] > self._sorted_ids[-1]) and \
                (len(new_ids) < 2 or (new_ids[1:] > new_ids[:-1]).all()):
            # ascending ids after all stored ones (collections' row ids): append
            self._sorted_ids = np.concatenate([self._sorted_ids, new_ids])
            self._sorted_nodes = np.concatenate([self._sorted_nodes,
                                                 np.arange(start, self._count, dtype=np.int32)])
            return
        all_ids = np.concatenate([self._sorted_ids, new_ids])
        all_nodes = np.concatenate([self._sorted_nodes,
                                    np.arange(start, self._count, dtype=np.int32)])
        order = np.argsort(all_ids, kind="stable")
        self._sorted_ids = all_ids[order]
        self._sorted_nodes = all_nodes[order]

    # ------------------------------------------------------------------ add
    def add(self, vectors: Any, ids: Any = None, *, num_threads: int | None = None,
            repair: bool = True) -> np.ndarray:
        """Insert a batch of vectors; returns their ids (int64).

        Parameters
        ----------
        vectors : array-like, (n, dim) or (dim,)
            Finite real numbers; under cosine, non-zero rows (stored normalised).
        ids : array-like of int, (n,), optional
            Unique int64 ids; by default the next ``n`` integers after the largest id stored
            (``0 .. n-1`` for a new index).
        num_threads : int, optional
            Worker threads (default: all of numba's).
        repair : bool
            After linking, make every node reachable from the entry point again (pruning can
            strand a few). This pass reads the whole graph; callers that add many small
            batches to a large index may pass False: then only the new nodes are checked
            (each gets an in-link if none of its neighbours links back to it), and
            ``repair()`` runs the full pass later.
        """
        threads = _validate.num_threads(num_threads, numba.config.NUMBA_NUM_THREADS)
        cosine = self._metric == "cosine"
        x, norms = _validate.vectors_and_norms(vectors, self._dim, "vectors", need_norms=cosine)
        n = x.shape[0]
        if ids is None:
            first = int(self._sorted_ids[-1]) + 1 if self._count else 0
            if first + n - 1 > np.iinfo(np.int64).max:
                raise InvalidArgumentError(
                    "default ids would pass the largest int64 after the largest stored id; pass ids=")
            new_ids = np.arange(first, first + n, dtype=np.int64)
        else:
            new_ids = _validate.ids(ids, n)
            self._check_new_ids(new_ids)
        return self.add_trusted(x, norms, new_ids, threads, repair)

    def add_trusted(self, x: np.ndarray, norms: np.ndarray | None, new_ids: np.ndarray,
                    threads: int, repair: bool) -> np.ndarray:
        """``add`` for inputs already checked: ``x`` float32 C-contiguous finite rows (with
        their ``norms`` under cosine, else None), ``new_ids`` int64 and absent. For callers
        that validated them once already (collections)."""
        n = x.shape[0]
        cosine = self._metric == "cosine"
        if n == 0:
            return new_ids
        levels = np.minimum(
            np.floor(-np.log1p(-self._rng.random(n)) / math.log(self._m)), MAX_LEVEL
        ).astype(np.int8)
        start = self._count
        stop = start + n
        upper = levels.astype(np.int64)
        pool_stop = self._pool_count + int(upper.sum())
        self._reserve(stop, pool_stop)
        if cosine:  # normalise straight into the index: no full-size temporary
            np.divide(x, norms[:, None], out=self._vectors[start:stop])
        else:
            self._vectors[start:stop] = x
        self._ids[start:stop] = new_ids
        if self._quantize:
            self._encode(start, stop)
        self._levels[start:stop] = levels
        offsets = self._pool_count + np.cumsum(upper) - upper
        self._up_offset[start:stop] = np.where(upper > 0, offsets, -1)
        self._pool_count = pool_stop
        self._count = stop
        self._index_ids(start)

        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            evals = self._insert(start, stop, threads)
        finally:
            numba.set_num_threads(previous)
        if repair or stop <= FULL_REPAIR_RATIO * n:
            repaired = self._repair_reachability(threads)
        else:
            stranded = unlinked_nodes(self._links0, self._deg0, start, stop)
            reachable = np.ones(stop, bool)
            reachable[stranded] = False
            repaired = self._link_in(stranded, reachable, None, threads)
        self.last_add_stats = {
            "inserted": n,
            "distance_evaluations": evals,
            "distance_evaluations_per_insert": evals / n,
            "repaired_links": repaired,
        }
        return new_ids

    def _encode(self, start: int, stop: int) -> None:
        """Search codes for rows ``start .. stop-1``. When they reach outside the columns'
        coded range, the range is widened (with ``CODE_MARGIN``) and every row is coded again
        into a new array, so that a reader's ``GraphView`` keeps codes and parameters that
        belong together."""
        lo, hi = column_ranges(self._vectors[start:stop])
        coded_hi = self._code_lo + 255 * self._code_step
        if start == 0 or (lo < self._code_lo).any() or (hi > coded_hi).any():
            if start > 0:
                lo = np.minimum(lo, self._code_lo)
                hi = np.maximum(hi, coded_hi)
            self._code_lo, self._code_step = sq8_params(lo, hi, self._metric_code, CODE_MARGIN)
            codes = np.empty_like(self._sq_codes)
            codes[:stop] = encode_sq8(self._vectors[:stop], self._code_lo, self._code_step)
            self._sq_codes = codes
        else:
            self._sq_codes[start:stop] = encode_sq8(self._vectors[start:stop], self._code_lo,
                                                    self._code_step)

    def _check_new_ids(self, new_ids: np.ndarray) -> None:
        uniq, counts = np.unique(new_ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][:10].tolist()
            raise DuplicateIdError(f"ids are repeated within the batch: {dup}")
        present = new_ids[self._lookup(new_ids) >= 0]
        if present.size:
            raise DuplicateIdError(
                f"ids are already in the index: {present[:10].tolist()} (upsert comes with collections)"
            )

    def _insert(self, start: int, stop: int, threads: int) -> int:
        """Link nodes ``start .. stop-1`` into the graph, batch by batch (prefix doubling).

        Nodes are linked in a seeded random order: rows a user passes in order are often each
        other's neighbours, and the nodes of one batch never link to each other directly. Rows
        stay where they are, so the data's own locality still helps the caches.
        """
        order = (start + self._rng.permutation(stop - start)).astype(np.int32)
        evals = 0
        pos = 0
        if self._entry < 0:  # the first node is the graph
            self._entry = int(order[0])
            self._top_level = int(self._levels[self._entry])
            pos = 1
        max_batch = max(MIN_BATCH, int(BATCH_FRACTION * stop))
        with_peers = stop - start <= PEER_SPAN * max_batch
        visited, tags = self._take_scratch(threads)
        # Construction reads int8 codes (a quarter of the bytes) when the batch is large enough
        # to pay for coding the whole index; the codes are dropped when the add returns.
        if self.keep_codes and self._dim >= CODES_MIN_DIM:
            rows = self._kept_codes(start, stop)
        elif (stop - start) * CODES_MIN_SHARE >= stop and self._dim >= CODES_MIN_DIM:
            rows = int8_codes(self._vectors[:stop], self._metric_code)
        else:
            rows = self._vectors
        while pos < len(order):
            # Within a batch the order changes no result (all search the same graph); in storage
            # order, consecutive inserts tend to touch the same rows (the data's own locality).
            batch = np.sort(order[pos: pos + max(1, min(start + pos, max_batch))])
            peers = self._batch_peers(batch) if with_peers and len(batch) > 1 else _NO_PEERS
            evals += int(link_batch(
                rows, self._levels, self._links0, self._deg0, self._links_up,
                self._deg_up, self._up_offset, batch, self._entry, self._top_level,
                self._m, self._ef_construction, self._metric_code, visited, tags, peers).sum())
            levels = self._levels[batch]
            top_new = int(levels.max())
            for level in range(min(top_new, self._top_level) + 1):
                links, degs = (self._links0, self._deg0) if level == 0 else (self._links_up, self._deg_up)
                keys = reverse_keys(links, degs, self._up_offset, self._levels, batch, level)
                evals += int(merge_reverse(keys, rows, links, degs, self._up_offset,
                                           level, self._metric_code))
            if top_new > self._top_level:
                self._entry = int(batch[np.argmax(levels)])
                self._top_level = top_new
            pos += len(batch)
        self._scratch.append((visited, tags))
        return evals

    def trim(self) -> None:
        """Give back the memory kept for growth, for an index that will not grow again (a
        sealed segment): the link arrays cut to ``count`` rows, the construction codes
        ``keep_codes`` kept dropped. The vectors and search codes stay as they are (no copy
        of most of the bytes): rows past ``count`` were never written, so they hold no
        memory. Later adds still work."""
        n, p = self._count, self._pool_count
        for name in ("_ids", "_levels", "_links0", "_deg0", "_up_offset"):
            arr = getattr(self, name)
            if arr.shape[0] > n:
                setattr(self, name, arr[:n].copy())
        self._links_up, self._deg_up = self._links_up[:p].copy(), self._deg_up[:p].copy()
        self.keep_codes = False
        self._codes = self._code_params = None
        self._scratch = []

    def repair(self, num_threads: int | None = None) -> int:
        """Give every node that the entry point cannot reach an in-link (see ``add``);
        returns the number of links written."""
        return self._repair_reachability(
            _validate.num_threads(num_threads, numba.config.NUMBA_NUM_THREADS))

    def _kept_codes(self, start: int, stop: int) -> np.ndarray:
        """Codes of rows ``:stop`` kept across adds: rows ``start:stop`` are coded with the
        kept scale, unless they need a wider one (then every row is coded again, with room
        to spare, so that this stays rare)."""
        new = self._vectors[start:stop]
        params = self._code_params
        codes = self._codes
        if params is not None and codes is not None and codes.shape[0] >= start:
            center, scale = params
            if float(max_abs_deviation(new, center)) * scale > 127.0:
                params = None
        else:
            params = None
        if params is None:
            self._code_params = params = code_params(self._vectors[:stop], self._metric_code, 1.25)
            codes = np.empty((self._code_room(stop), self._dim), np.int8)
            codes[:stop] = quantize_rows(self._vectors[:stop], *params)
        else:
            if codes.shape[0] < stop:
                codes = self._grown(codes, self._code_room(stop), None)
            codes[start:stop] = quantize_rows(new, *params)
        self._codes = codes
        return codes[:stop]

    def _code_room(self, stop: int) -> int:
        """Rows to allocate for kept construction codes that must hold ``stop`` rows."""
        return max(stop, self._links0.shape[0], self.row_reserve)

    def _batch_peers(self, batch: np.ndarray) -> np.ndarray:
        """The ``PEERS`` nearest nodes of each node of ``batch`` (sorted) among the nodes of its
        run of ``PEER_BLOCK`` consecutive batch entries; int32 (len(batch), PEERS), -1 padded."""
        out = np.full((len(batch), PEERS), -1, np.int32)
        for lo in range(0, len(batch), PEER_BLOCK):
            nodes = batch[lo:lo + PEER_BLOCK]
            if len(nodes) < 2:
                continue
            x = self._vectors[nodes]
            with _blas.single_thread():
                scores = x @ x.T
            if self._metric == "l2":
                scores = 2 * scores - (x * x).sum(axis=1)[None, :]
            nearest_peers(scores, nodes, out[lo:lo + len(nodes)])
        return out

    def _repair_reachability(self, threads: int) -> int:
        """Give every node that level 0 cannot reach from the entry an in-link from a reachable
        node (pruning can strand a node, and so can inner product, under which some vectors are
        nobody's neighbour). Returns the number of links written.

        A stranded node ``u`` gets a link from the nearest reachable node with a free slot among
        its own out-neighbours and the nodes a search for it finds. Only appends: each pass makes
        ``u`` and all it reaches reachable. Should every candidate be full, a link whose target
        has another in-link is replaced instead.
        """
        written = 0
        n = self._count
        for _ in range(REPAIR_PASSES):
            stranded = unreachable_nodes(self._links0, self._deg0, self._entry, n)
            if stranded.size == 0:
                break
            reachable = np.ones(n, bool)
            reachable[stranded] = False
            rows = self._links0[:n]
            indeg = np.bincount(rows[rows >= 0], minlength=n)
            written += self._link_in(stranded, reachable, indeg, threads)
        return written

    def _link_in(self, stranded: np.ndarray, reachable: np.ndarray, indeg: np.ndarray | None,
                 threads: int) -> int:
        """Link each node of ``stranded`` from the nearest node of ``reachable`` with a free
        slot among its own out-neighbours and the nodes a search for it finds; should all be
        full, a link whose target has another in-link (per ``indeg``; None: the last link) is
        replaced. ``reachable`` is updated (through the links, when ``indeg`` is given).
        Returns the number of links written."""
        if stranded.size == 0:
            return 0
        width = self._links0.shape[1]
        n = self._count
        found, _ = self._search_nodes(self.view(), self._vectors[stranded], min(32, n), 64, threads)
        written = 0
        for u, hits in zip(stranded, found):
            if reachable[u]:  # reached through a node linked earlier in this pass
                continue
            own = self._links0[u, : self._deg0[u]]
            d = distances_to_rows(self._vectors[u], self._vectors, own, self._metric_code)
            cand = np.concatenate([own[np.argsort(d, kind="stable")], hits[hits >= 0]])
            cand = cand[reachable[cand] & (cand != u)]
            if cand.size == 0:
                cand = np.array([self._entry], np.int32)
            room = cand[self._deg0[cand] < width]
            if room.size:
                v = int(room[0])
                slot = int(self._deg0[v])
                self._links0[v, slot] = u
                self._deg0[v] += 1
            else:
                v = int(cand[0])
                slot = width - 1
                if indeg is not None:
                    spare = np.flatnonzero(indeg[self._links0[v]] >= 2)
                    slot = int(spare[-1]) if spare.size else width - 1
                    indeg[self._links0[v, slot]] -= 1
                self._links0[v, slot] = u
            written += 1
            if indeg is not None:
                indeg[u] += 1
                mark_reachable(self._links0, self._deg0, reachable, u)
            else:
                reachable[u] = True
        return written

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int = 10, *, ef: int | None = None,
               num_threads: int | None = None, allowed: Any = None,
               filter_path: str = "auto", recall: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored vectors of each query.

        Parameters
        ----------
        queries : array-like, (nq, dim) or (dim,)
        k : int
            Neighbours per query.
        ef : int, optional
            Beam width of the level-0 search (the paper's ef), >= k. Default: the beam this
            index was calibrated to need for recall@10 0.95 (``default_ef``; ``calibrate``),
            scaled by ``k / 10`` for larger ``k``.
        num_threads : int, optional
            Worker threads for a batch (default: all of numba's).
        allowed : array-like of int, optional
            Only these ids may be returned (a filter); ids not in the index are ignored. The
            graph search honours the set while it walks; when the set is small enough that
            scoring it outright is cheaper (estimated from its size), it is scanned exactly.
        filter_path : "auto", "graph" or "exact"
            With ``allowed``: choose by that estimate (the default), or always walk the graph,
            or always scan the set exactly (exact results, cost grows with the set).
        recall : float, optional
            Instead of ``ef``: the recall@10 wanted; the smallest beam the calibration measured
            to reach it is used (``ef_for``).

        Returns
        -------
        ids : int64 (nq, k), or (k,) for one 1-D query; -1 pads when fewer than k are found
        distances : float32, same shape; +inf pads (see the module docstring for conventions)
        """
        threads = _validate.num_threads(num_threads, numba.config.NUMBA_NUM_THREADS)
        k = _validate.positive_int(k, "k")
        ef = self._resolve_ef(k, ef, recall)
        if filter_path not in ("auto", "graph", "exact"):
            raise InvalidArgumentError(f"filter_path must be 'auto', 'graph' or 'exact', got {filter_path!r}")
        one = np.ndim(queries) == 1
        q = _validate.vectors(queries, self._dim, "queries", normalize=self._metric == "cosine")
        g = self.view()
        self._remember(q)
        if allowed is None:
            nodes, dists = self._search_nodes(g, q, k, ef, threads)
        else:
            keys = _validate.ids(allowed, np.size(allowed), "allowed")
            found = self._lookup(keys)
            nodes, dists = self._search_allowed(g, q, k, ef, threads, np.unique(found[found >= 0]),
                                                filter_path)
        labels = labels_of(nodes, g.ids)
        if one:
            return labels[0], dists[0]
        return labels, dists

    def _remember(self, q: np.ndarray) -> None:
        """Keep prepared queries ``q`` in the ring of recent queries (see QUERY_MEMORY).
        Concurrent searches may overwrite each other's slots: a sample, not a log."""
        if q.shape[0] == 0:
            return
        if self._recent.shape[0] == 0:
            self._recent = np.empty((QUERY_MEMORY, self._dim), np.float32)
        seen = self._recent_seen
        if q.shape[0] == 1:
            self._recent[seen % QUERY_MEMORY] = q[0]
        else:
            take = q[-QUERY_MEMORY:]
            first = seen + q.shape[0] - take.shape[0]
            self._recent[(first + np.arange(take.shape[0])) % QUERY_MEMORY] = take
        self._recent_seen = seen + q.shape[0]

    def recent_queries(self) -> np.ndarray:
        """A copy of the queries this index remembers (the last ``QUERY_MEMORY`` searched,
        in no particular order; prepared: unit length under cosine)."""
        return self._recent[: min(self._recent_seen, self._recent.shape[0])].copy()

    def _resolve_ef(self, k: int, ef: object, recall: object) -> int:
        if recall is not None:
            if ef is not None:
                raise InvalidArgumentError("pass ef or recall, not both")
            if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0 < recall <= 1:
                raise InvalidArgumentError(f"recall must be a number in (0, 1], got {recall!r}")
            return self.ef_for(k, float(recall))
        if ef is None:
            return self.ef_for(k)
        return _validate.k_and_ef(k, ef, DEFAULT_EF)[1]

    def view(self) -> "GraphView":
        """The graph as it stands: arrays and counts a search can use while this index keeps
        growing. Rows and links below ``count`` stay valid (see ``GraphView``)."""
        return GraphView(self._vectors, self._ids, self._links0, self._deg0, self._links_up,
                         self._deg_up, self._up_offset, self._entry, self._top_level, self._count,
                         self._sq_codes, self._code_lo, self._code_step)

    def search_masked(self, queries: np.ndarray, k: int, ef: int | None, num_threads: int | None,
                      mask: np.ndarray | None, view: "GraphView | None" = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Search ``view`` (default: the index as it stands) for prepared queries (C-contiguous
        float32, (nq, dim), unit length under cosine) restricted to nodes whose ``mask`` (bool,
        one per node in insertion order) is set; ``None`` means all. Returns ids and distances
        as ``search`` (``ef`` None: this index's default for ``k``, as last calibrated: the
        caller calibrates, see ``calibrate_if_stale``). For callers that keep their own
        per-node state (collections); inputs are trusted."""
        threads = _validate.num_threads(num_threads, numba.config.NUMBA_NUM_THREADS)
        g = self.view() if view is None else view
        ef = self.ef_for(k, calibrate=False) if ef is None else max(ef, k)
        self._remember(queries)
        if mask is None:
            nodes, dists = self._search_nodes(g, queries, k, ef, threads)
        else:
            nodes, dists = self._search_allowed(g, queries, k, ef, threads,
                                                np.flatnonzero(mask[: g.count]).astype(np.int32))
        labels = labels_of(nodes, g.ids)
        return labels, dists

    def _search_allowed(self, g: "GraphView", q: np.ndarray, k: int, ef: int, threads: int,
                        nodes: np.ndarray, path: str = "auto"):
        """Search restricted to ``nodes`` (sorted int32): exact scan or filtered graph search,
        whichever the cost estimate says is cheaper (or ``path`` says)."""
        cheaper = nodes.size * nodes.size * EXACT_COST <= GRAPH_COST * ef * g.count
        if path == "exact" or (path == "auto" and cheaper):
            return self._exact_nodes(g, q, k, nodes)
        mask = np.zeros(g.count, np.uint8)
        mask[nodes] = 1
        return self._search_nodes(g, q, k, ef, threads, mask)

    def _exact_nodes(self, g: "GraphView", q: np.ndarray, k: int, nodes: np.ndarray):
        """Exact k nearest among ``nodes`` (int32)."""
        pos, dists = exact_top_k(q, g.vectors[nodes], k, self._metric_code)
        out = np.where(pos >= 0, nodes[np.maximum(pos, 0)] if nodes.size else -1, -1)
        return out.astype(np.int32), dists

    def _search_nodes(self, g: "GraphView", q: np.ndarray, k: int, ef: int, threads: int,
                      allowed: np.ndarray | None = None, skip: np.ndarray | None = None):
        nq = q.shape[0]
        if g.count == 0 or nq == 0:
            return np.full((nq, k), -1, np.int32), np.full((nq, k), np.inf, np.float32)
        chunks = max(1, min(threads, nq))
        visited, tags = self._take_scratch(chunks, g.count)
        args = (q, k, ef, g.vectors, g.codes, g.code_lo, g.code_step, g.links0, g.deg0,
                g.links_up, g.deg_up, g.up_offset, g.entry, g.top_level, g.count, self._metric_code,
                visited, tags, _NO_FILTER if allowed is None else allowed,
                _NO_SKIP if skip is None else skip)
        if chunks == 1:
            nodes, dists, evals = search_serial(*args)
        else:
            previous = numba.get_num_threads()
            numba.set_num_threads(threads)
            try:
                nodes, dists, evals = search_batch(*args)
            finally:
                numba.set_num_threads(previous)
        self._scratch.append((visited, tags))
        self.last_search_evaluations = evals
        return nodes, dists

    # ------------------------------------------------------------------ default beam
    @property
    def default_ef(self) -> int:
        """The beam ``search`` uses for ``k <= 10`` when given no ``ef``: the smallest one the
        last calibration (``calibrate``) measured to reach recall@10 0.95, or ``DEFAULT_EF``
        for an index too small to have been calibrated."""
        cal = self._calibration
        return DEFAULT_EF if cal is None else int(cal["default_ef"])

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The last calibration: ``count`` (rows then), ``k``, ``target``, ``efs`` and the
        ``recall`` measured at each (the sample's mean recall@k less its standard error),
        ``default_ef``, ``source`` of the queries ("rows", "queries" or "given") and
        ``sample``; None before the first."""
        return None if self._calibration is None else dict(self._calibration)

    def ef_for(self, k: int, recall: float | None = None, *, calibrate: bool = True) -> int:
        """The beam a search for ``k`` neighbours uses without ``ef``: for a ``recall`` target,
        the smallest calibrated beam measured to reach it (the largest measured when none
        did), else ``default_ef``; for ``k > 10`` scaled by ``k / 10``; never below ``k``.
        With ``calibrate`` an index grown since its last calibration is calibrated first."""
        if calibrate:
            self.calibrate_if_stale()
        if recall is None:
            base = self.default_ef
        else:
            if self._calibration is None and self._count > k + 1:
                self.calibrate(k=min(k, 10))
            cal = self._calibration
            if cal is None:
                base = DEFAULT_EF
            else:
                reached = [e for e, r in zip(cal["efs"], cal["recall"]) if r >= recall]
                if not reached and cal["efs"][-1] < CALIBRATION_EFS[-1]:
                    cal = self._extend_calibration(recall)
                    reached = [e for e, r in zip(cal["efs"], cal["recall"]) if r >= recall]
                base = reached[0] if reached else cal["efs"][-1]
        return max(k, math.ceil(base * max(1.0, k / 10)))

    def calibrate(self, queries: Any = None, *, k: int = 10, target: float = CALIBRATION_TARGET,
                  sample: int = CALIBRATION_SAMPLE, num_threads: int | None = None,
                  observed: bool = True) -> dict[str, Any]:
        """Measure recall@k of ``search`` against exact search for a ladder of beams
        (``CALIBRATION_EFS``) and make the smallest beam that reaches ``target`` the default
        (``default_ef``; saved with the index). An index of 1,000 rows or more that has grown
        by a quarter since its last calibration is calibrated again by the first search that
        needs its default, and by ``save``.

        The queries are, in this order: ``queries`` when given (a sample of the user's own);
        else, with ``observed`` and once the index has been searched ``sample`` times, the
        queries it remembers (``recent_queries``: the last ``QUERY_MEMORY``), which are what
        its users ask; else ``sample`` of its own rows (drawn with the index's seed), each
        searched as if it were not in the index (its node is skipped by the walk and left out
        of the exact answer). Rows stand for new queries from the same data; they are easier
        than queries of another kind (see ``QUERY_MEMORY``), hence the switch to observed
        queries as soon as there are enough. ``calibration["source"]`` says which was used.
        Costs one exact search per query (a BLAS pass over the rows) and a few hundred graph
        searches: about 0.5 s for 100,000 rows of 384 dimensions on 2 cores.
        Returns the calibration (see ``calibration``).
        """
        threads = _validate.num_threads(num_threads, numba.config.NUMBA_NUM_THREADS)
        k = _validate.positive_int(k, "k")
        if not (isinstance(target, (int, float)) and 0 < target <= 1):
            raise InvalidArgumentError(f"target must be a recall in (0, 1], got {target!r}")
        sample = _validate.positive_int(sample, "sample")
        state = self._calibration_state(observed)
        return self._calibrate_state(state, queries, k, float(target), sample, threads)

    def _calibration_state(self, observed: bool = True):
        """What a calibration reads, taken now: (view, levels, recent queries or None). Taken
        on the thread that adds, a calibration can then run on any thread."""
        return self.view(), self._levels, (self.recent_queries() if observed else None)

    def _calibrate_state(self, state, queries: Any, k: int, target: float, sample: int,
                         threads: int) -> dict[str, Any]:
        cal_set = self._calibration_set(state, queries, k, sample)
        efs, recalls = self._ladder(cal_set, k, target, threads, g=state[0])
        reached = [e for e, r in zip(efs, recalls) if r >= target]
        cal = {"count": state[0].count, "k": k, "target": target, "efs": efs, "recall": recalls,
               "default_ef": reached[0] if reached else efs[-1], "source": cal_set[3],
               "sample": sample}
        current = self._calibration
        if current is None or current["count"] <= cal["count"]:  # never over a newer one
            self._cal_set = cal_set
            self._calibration = cal
        return dict(cal)

    def calibration_task(self) -> Callable[[], Any] | None:
        """When the default beam is due for calibration (``calibrate_if_stale``): a function
        that calibrates the index as it stands now, for another thread to run while this one
        goes on adding (collections: the writer never waits for it); its result is installed
        when it ends, unless a newer calibration came first. None when not due. Call it on
        the thread that adds."""
        if not self._calibration_due():
            return None
        state = self._calibration_state()
        return lambda: self._calibrate_state(state, None, 10, CALIBRATION_TARGET,
                                             CALIBRATION_SAMPLE, 1)

    def _calibration_set(self, state, queries: Any, k: int, sample: int):
        """(queries, exact truth, skip or None, source) for ``calibrate`` over ``state``
        (``_calibration_state``)."""
        g, levels, recent = state
        n = g.count
        rows = g.vectors[:n]
        if queries is None and recent is not None and recent.shape[0] >= sample and n >= k:
            truth, _ = exact_top_k(recent, rows, k, self._metric_code)
            return recent, truth, None, "queries"
        if queries is None:
            pool = np.flatnonzero(levels[:n] == 0)
            if pool.size == 0 or n <= k + 1:
                raise InvalidArgumentError(f"calibrate needs more than k + 1 = {k + 1} rows, the index has {n}")
            rng = np.random.default_rng([self._seed, n])
            skip = np.sort(rng.choice(pool, min(sample, pool.size), replace=False)).astype(np.int32)
            q = np.ascontiguousarray(rows[skip])
            pos, _ = exact_top_k(q, rows, k + 1, self._metric_code)
            truth = np.array([[p for p in row if p != s][:k] for row, s in zip(pos, skip)], np.int64)
            return q, truth, skip, "rows"
        q = _validate.vectors(queries, self._dim, "queries", normalize=self._metric == "cosine")
        if n < k or q.shape[0] == 0:
            raise InvalidArgumentError(f"calibrate needs at least k = {k} rows in the index and one query")
        truth, _ = exact_top_k(q, rows, k, self._metric_code)
        return q, truth, None, "given"

    def _ladder(self, cal_set, k: int, target: float, threads: int, start: int = 0, g=None):
        """Recall@k of the calibration set at the beams of CALIBRATION_EFS from ``start`` up,
        to the first reaching ``target`` (the larger beams cost most: they are measured only
        when a search asks for that recall, see ``ef_for``). Returns (efs, recalls)."""
        q, truth, skip, _ = cal_set
        g = self.view() if g is None else g
        efs, recalls = [], []
        ladder = [e for e in CALIBRATION_EFS if e >= max(k, start)]
        if not ladder and start == 0:  # k beyond the ladder: its own beam
            ladder = [k]
        for ef in ladder:
            found, _ = self._search_nodes(g, q, k, ef, threads, skip=skip)
            efs.append(ef)
            recalls.append(round(_recall_low(found, truth, k), 4))
            if recalls[-1] >= target:
                break
        return efs, recalls

    def _extend_calibration(self, recall: float) -> dict[str, Any]:
        """Measure the last calibration's queries at larger beams, up to one reaching
        ``recall`` (a search asked for more recall than measured so far)."""
        cal = dict(self._calibration)
        cal_set = self._cal_set
        if cal_set is None:  # loaded from a file: the same kind of queries again
            source = cal.get("source", "rows")
            if source == "given":
                return cal
            cal_set = self._calibration_set(self._calibration_state(source == "queries"), None,
                                            cal["k"], cal.get("sample", CALIBRATION_SAMPLE))
            self._cal_set = cal_set
        efs, recalls = self._ladder(cal_set, cal["k"], recall, numba.config.NUMBA_NUM_THREADS,
                                    start=cal["efs"][-1] + 1)
        cal["efs"] = cal["efs"] + efs
        cal["recall"] = cal["recall"] + recalls
        self._calibration = cal
        return dict(cal)

    def calibrate_if_stale(self) -> None:
        """Calibrate when the index has grown enough since the last time, or when it last used
        its own rows and has now been searched enough to use its queries (see CALIBRATION_*
        and QUERY_MEMORY)."""
        if self._calibration_due():
            self.calibrate()

    def _calibration_due(self) -> bool:
        cal = self._calibration
        if self._count < CALIBRATION_MIN:
            return False
        return cal is None or self._count >= CALIBRATION_GROWTH * cal["count"] \
            or (cal.get("source", "rows") == "rows" and self._recent_seen >= CALIBRATION_SAMPLE)

    # ------------------------------------------------------------------ access
    def get(self, ids: Any) -> np.ndarray:
        """Stored vectors of ``ids`` (float32 (n, dim); unit length under cosine).

        Raises ``IdNotFoundError`` (a ``KeyError``) naming the ids that are absent.
        """
        one = np.ndim(ids) == 0
        keys = _validate.ids(ids, np.size(ids), "ids")
        nodes = self._lookup(keys)
        if (nodes < 0).any():
            raise IdNotFoundError(f"ids not in the index: {keys[nodes < 0][:10].tolist()}")
        out = self._vectors[nodes].copy()
        return out[0] if one else out

    @property
    def ids(self) -> np.ndarray:
        """The ids stored, in insertion order (int64, a copy)."""
        return self._ids[: self._count].copy()

    def stats(self) -> dict[str, Any]:
        """Levels, degrees and memory of the graph."""
        n = self._count
        levels = self._levels[:n]
        per_level = np.bincount(levels, minlength=max(self._top_level + 1, 1)) if n else np.zeros(1, np.int64)
        nodes_at = np.cumsum(per_level[::-1])[::-1]
        mapped = isinstance(self._vectors, np.memmap)
        arrays = [self._ids, self._levels, self._links0, self._deg0,
                  self._up_offset, self._links_up, self._deg_up, self._sorted_ids,
                  self._sorted_nodes, self._sq_codes] + ([] if self._codes is None else [self._codes]) \
            + ([] if mapped else [self._vectors])
        upper = self._deg_up[: self._pool_count]
        return {
            "count": n,
            "dim": self._dim,
            "metric": self._metric,
            "m": self._m,
            "ef_construction": self._ef_construction,
            "capacity": int(self._links0.shape[0]),
            "levels": int(self._top_level + 1),
            "nodes_per_level": nodes_at.tolist(),
            "entry_point": int(self._entry),
            "mean_degree_level0": float(self._deg0[:n].mean()) if n else 0.0,
            "mean_degree_upper": float(upper.mean()) if upper.size else 0.0,
            "memory_bytes": int(sum(a.nbytes for a in arrays)),  # (not the mapped vectors)
            "vector_bytes": int(self._vectors.nbytes),
            "vectors_on_disk": mapped,
            "code_bytes": int(self._sq_codes.nbytes),
            "link_bytes": int(self._links0.nbytes + self._deg0.nbytes + self._links_up.nbytes
                              + self._deg_up.nbytes + self._up_offset.nbytes),
        }

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, calibrate: bool = True, split: bool = False) -> None:
        """Write the index to ``path`` atomically (temp file, fsync, rename, fsync directory).
        The format is described in ``shoal.storage.format``. With ``calibrate`` an index due
        for calibration is calibrated first (its file then carries the result).

        With ``split`` the vectors and codes go to row files of their own beside ``path``
        (``<name>.f32`` and ``<name>.u8``, or the ``vectors_file`` when it is there), which
        later split saves to that directory only append to: saving again writes the links
        and the rows added since, not every row (``external_files`` names them)."""
        if calibrate:
            self.calibrate_if_stale()
        self.write_state(path, self.saved_state(copy=False), split=split)

    def saved_state(self, *, copy: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What ``save`` writes, as of now: (header, sections). With ``copy`` the arrays that
        later adds rewrite in place (links and degrees) are copied, so that another thread can
        write the state (``write_state``) while this index goes on growing: rows, ids, levels
        and codes below ``count`` never change (new codes go to a new array)."""
        sections = self._sections()
        if copy:
            for name in ("links0", "deg0", "links_up", "deg_up"):
                sections[name] = sections[name].copy()
        header = self._header()
        header["calibration"] = copy_module.deepcopy(header["calibration"])
        return header, sections

    def write_state(self, path: str | os.PathLike, state: tuple[dict[str, Any], dict[str, np.ndarray]],
                    *, split: bool = False) -> None:
        """Write a ``saved_state`` as ``save`` does (one write at a time per index)."""
        from shoal.storage.format import write_index

        header, sections = state
        external = self._append_rows(os.path.abspath(os.fspath(path)), sections) if split else None
        write_index(path, header, sections, external)

    def _append_rows(self, path: str, sections: dict[str, np.ndarray]) -> dict[str, tuple[str, int]]:
        """Append the rows the row files lack (a new codes file when the codes were coded
        again since); (file name, CRC32) by section."""
        directory, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
        kept = self._row_files
        vectors = kept.get("vectors")
        if vectors is None or os.path.dirname(vectors.path) != directory:
            mapped = self._vectors_file is not None and os.path.dirname(self._vectors_file) == directory
            vectors = RowFile(self._vectors_file if mapped else os.path.join(directory, stem + ".f32"))
        vectors.append(sections["vectors"][vectors.rows:])
        out = {"vectors": vectors}
        if self._quantize:
            codes = kept.get("codes")
            if codes is None or os.path.dirname(codes.path) != directory \
                    or self._saved_code_lo is not sections["code_lo"]:
                codes = RowFile(os.path.join(directory, stem + ".u8"))
            codes.append(sections["codes"][codes.rows:])
            self._saved_code_lo = sections["code_lo"]
            out["codes"] = codes
        self._row_files = out
        return {name: (f.name, f.crc) for name, f in out.items()}

    def external_files(self) -> list[str]:
        """Names of the row files the last split save or load used (see ``save``)."""
        return [f.name for f in self._row_files.values()]

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool | str = False, verify: bool | None = None) -> "Index":
        """Read an index saved with ``save``.

        With ``mmap=True`` the vectors are memory-mapped, not read; their checksum is then
        checked only with ``verify=True`` (every other section is always checked); rows added
        later go to RAM. With ``mmap="r+"`` (an index saved with ``split``) rows added later go
        to its vectors file too, past the rows its saves counted: an index that grows larger
        than RAM. A damaged, truncated or foreign file raises ``CorruptIndexError``.
        """
        from shoal.storage.format import read_index

        if mmap not in (False, True, "r+"):
            raise InvalidArgumentError(f"mmap must be False, True or 'r+', got {mmap!r}")
        header, sections = read_index(path, mmap=bool(mmap), verify=(not mmap) if verify is None else verify)
        for field in ("count", "pool_count", "entry", "top_level"):
            if not isinstance(header.get(field), int):
                raise CorruptIndexError(f"{os.fspath(path)}: header field {field!r} is missing or not an integer")
        index = cls._from_parts(header, sections)
        index.check_integrity(where=os.fspath(path))
        directory = os.path.dirname(os.path.abspath(os.fspath(path)))
        index._row_files = {name: RowFile(os.path.join(directory, entry["file"]), index._count, entry["crc32"])
                            for name, entry in header["sections"].items() if "file" in entry}
        index._saved_code_lo = index._code_lo
        if mmap == "r+":
            if "vectors" not in index._row_files:
                raise InvalidArgumentError("mmap='r+' needs an index saved with split=True")
            index._vectors_file = index._row_files["vectors"].path
        return index

    def check_integrity(self, *, reachable: bool = False, where: str = "index") -> None:
        """Raise ``CorruptIndexError`` naming the first broken invariant: entry point and top
        level, degrees within their rows, links to nodes that exist on that level, no
        self-loops or repeated links, upper-level rows that tile their pool, unique ids; with
        ``reachable``, also that every node can be reached from the entry point. ``load``
        runs it (without reachability) on every file; tests run it after building."""
        from shoal.kernels.build import unreachable_nodes
        from shoal.kernels.graph import OK, PROBLEMS, check_graph

        n = self._count
        levels = self._levels[:n]
        if n and not (0 <= self._entry < n and self._top_level == int(levels.max())
                      and levels[self._entry] == self._top_level):
            raise CorruptIndexError(f"{where}: entry point or top level is inconsistent")
        if not n and (self._entry != -1 or self._pool_count):
            raise CorruptIndexError(f"{where}: an empty index has an entry point or links")
        code, node = check_graph(self._levels, self._links0, self._deg0, self._up_offset, self._links_up,
                                 self._deg_up, n, self._pool_count, max(self._top_level, 0))
        if code != OK:
            raise CorruptIndexError(f"{where}: graph is damaged at node {node}: {PROBLEMS[code]}")
        ids = self._ids[:n]
        if n > 1 and not (ids[1:] > ids[:-1]).all() and np.unique(ids).size != n:  # (ascending: unique)
            raise CorruptIndexError(f"{where}: ids are not unique")
        if reachable and n:
            lost = unreachable_nodes(self._links0, self._deg0, self._entry, n)
            if lost.size:
                raise CorruptIndexError(f"{where}: {lost.size} nodes cannot be reached from the entry point")

    def _header(self) -> dict[str, Any]:
        return {
            "dim": self._dim, "metric": self._metric, "m": self._m,
            "ef_construction": self._ef_construction, "seed": self._seed,
            "count": self._count, "pool_count": self._pool_count, "entry": self._entry,
            "top_level": self._top_level, "rng_state": self._rng.bit_generator.state,
            "quantize": self._quantize, "calibration": self._calibration,
        }

    def _sections(self) -> dict[str, np.ndarray]:
        n, p = self._count, self._pool_count
        return {
            "vectors": self._vectors[:n], "ids": self._ids[:n], "levels": self._levels[:n],
            "links0": self._links0[:n], "deg0": self._deg0[:n], "up_offset": self._up_offset[:n],
            "links_up": self._links_up[:p], "deg_up": self._deg_up[:p],
            "codes": self._sq_codes[:n], "code_lo": self._code_lo, "code_step": self._code_step,
        }

    @classmethod
    def _from_parts(cls, header: dict[str, Any], sections: dict[str, np.ndarray]) -> "Index":
        # A version 1 file predates codes: it is loaded with them (computed below).
        quantize = header["quantize"] if header.get("format_version", 1) >= 2 else "sq8"
        self = cls(header["dim"], header["metric"], m=header["m"],
                   ef_construction=header["ef_construction"], seed=header["seed"],
                   quantize=quantize)
        self._calibration = header.get("calibration")
        self._rng.bit_generator.state = header["rng_state"]
        self._count = header["count"]
        self._pool_count = header["pool_count"]
        self._entry = header["entry"]
        self._top_level = header["top_level"]
        codes = sections.pop("codes", None)
        for name, arr in sections.items():
            setattr(self, "_" + name, arr)
        if codes is not None:  # stored: kept as read (mmap or not, codes live in RAM)
            self._sq_codes = np.ascontiguousarray(codes)
        else:
            self._sq_codes = np.zeros((self._vectors.shape[0] if self._quantize else 0, self._dim), np.uint8)
            if self._quantize and self._count:
                self._encode(0, self._count)
        self._index_ids(0)
        return self
