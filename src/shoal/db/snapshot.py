"""What a reader sees: an immutable snapshot of a collection's segments and their live rows.

A ``Snapshot`` holds, per segment, the ``shoal.Index``, a ``GraphView`` of it (arrays, node
count, entry point) and a live mask. The writer builds a new snapshot for each write (new
rows, tombstones, or both: *one* publication per write) and publishes it with one
assignment, so a reader in another thread holds one consistent state from the start of its
search to its end: every point exactly once, as its old version or its new one.

Row ids (``uid``) name versions: a row id's key and payload never change, and the payload
store keeps a retired version readable until no snapshot that shows it can be in use. That
moment is found without locks: every snapshot refers to the ``Epoch`` of its compaction, and
an epoch refers to the next one, so an epoch is freed only when no snapshot of it *or of an
older epoch* is alive; its finalizer then reports that the versions retired before that
compaction may be purged.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from shoal.index import GraphView, Index


class Epoch:
    """The snapshots between two compactions share one epoch (see the module docstring)."""

    __slots__ = ("newer", "__weakref__")

    def __init__(self) -> None:
        self.newer: Epoch | None = None

    def close(self, on_free: Callable[[], None]) -> "Epoch":
        """Start the next epoch; ``on_free`` runs once no snapshot of this epoch or an older
        one is alive (in whichever thread lets go of the last one)."""
        self.newer = Epoch()
        weakref.finalize(self, on_free).atexit = False
        return self.newer


@dataclass(frozen=True)
class Segment:
    file: str | None   # the file holding it as of the last checkpoint (None: not saved yet)
    index: Index
    view: GraphView    # the graph as of this snapshot; node i has the i-th smallest row id
    live: np.ndarray   # bool, at least view.count long; only [:view.count] is read
    dead: int          # nodes below count that are not live

    @staticmethod
    def of(file: str | None, index: Index, live: np.ndarray | None = None) -> "Segment":
        view = index.view()
        if live is None:
            live = np.ones(view.count, bool)
        return Segment(file, index, view, live, int(view.count - live[: view.count].sum()))

    @property
    def uids(self) -> np.ndarray:
        """Row ids by node (ascending)."""
        return self.view.ids[: self.view.count]

    def files(self) -> list[str]:
        """The files holding this segment as of the last checkpoint: its segment file and
        the row files it names (none if it was never saved)."""
        return [] if self.file is None else [self.file, *self.index.external_files()]

    def live_nodes(self) -> np.ndarray:
        return np.flatnonzero(self.live[: self.view.count])

    def without(self, uids: np.ndarray) -> "Segment":
        """This segment with sorted row ids ``uids`` tombstoned (a new mask if any is here)."""
        hit = np.isin(self.uids, uids, assume_unique=True)
        if not hit.any():
            return self
        live = self.live.copy()
        fresh = hit & live[: hit.size]
        live[: hit.size] &= ~hit
        return replace(self, live=live, dead=self.dead + int(fresh.sum()))


@dataclass(frozen=True)
class Snapshot:
    segments: tuple[Segment, ...]   # sealed ones, then the active one (if any)
    epoch: Epoch

    @property
    def rows(self) -> int:
        return sum(s.view.count for s in self.segments)

    @property
    def dead(self) -> int:
        return sum(s.dead for s in self.segments)

    @property
    def live_count(self) -> int:
        return self.rows - self.dead

    def locate(self, uid: int) -> tuple[Segment, int] | None:
        """(segment, node) of a live row id, or None."""
        for seg in self.segments:
            uids = seg.uids
            pos = int(np.searchsorted(uids, uid))
            if pos < uids.size and uids[pos] == uid:
                return (seg, pos) if seg.live[pos] else None
        return None

    def live_among(self, uids: np.ndarray) -> np.ndarray:
        """The row ids among sorted ``uids`` that are live here (sorted)."""
        out = [seg.uids[seg.live[: seg.view.count] & np.isin(seg.uids, uids)] for seg in self.segments]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def live_mask(self, uids: np.ndarray) -> np.ndarray:
        """Whether each of ``uids`` (any order) is a live row here: a binary search per
        segment, for a few ids (``live_among`` reads every row id of every segment)."""
        out = np.zeros(uids.size, bool)
        for seg in self.segments:
            ids = seg.uids
            if ids.size == 0 or uids.size == 0:
                continue
            pos = np.minimum(np.searchsorted(ids, uids), ids.size - 1)
            out |= (ids[pos] == uids) & seg.live[pos]
        return out

    def vector_of(self, uid: int) -> np.ndarray | None:
        found = self.locate(uid)
        return None if found is None else found[0].view.vectors[found[1]].copy()


def merge_top_k(parts_u: list[np.ndarray], parts_d: list[np.ndarray], nq: int, k: int):
    """The ``k`` nearest of per-segment results (row ids int64, distances float32, each
    (nq, k)), nearest first; -1 / +inf where fewer."""
    if not parts_u:
        return np.full((nq, k), -1, np.int64), np.full((nq, k), np.inf, np.float32)
    if len(parts_u) == 1:
        return parts_u[0], parts_d[0]
    all_u = np.concatenate(parts_u, axis=1)
    all_d = np.concatenate(parts_d, axis=1)
    order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_u, order, 1), np.take_along_axis(all_d, order, 1)
