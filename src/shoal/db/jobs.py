"""A collection's maintenance jobs that run beside its writer: a checkpoint's segment write and
a compaction's build. Each is begun and ended by the writer under its lock
(``shoal.db.collection``); in between, a thread of its own does the work below, touching only
what the job owns (a copy of the links, sealed segments, its own new files), and keeps any
error for the writer to raise when it ends the job.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from shoal.db.snapshot import Segment
from shoal.index import Index


@dataclass
class Checkpoint:
    """A checkpoint in progress: begun under the writer lock, its segment written (on a thread
    of its own, or not), ended under the lock (``Collection._checkpoint_locked``)."""

    seq: int               # the last log record it covers
    logged: int            # rows logged up to then
    seal: bool
    doomed: list[str]      # files to remove once the manifest no longer names them
    name: str | None = None                # the new segment file, if the segment changed
    index: Index | None = None
    before: list[str] = field(default_factory=list)  # the segment's files before
    state: tuple | None = None             # Index.saved_state, until written
    thread: threading.Thread | None = None
    error: BaseException | None = None
    times: dict = field(default_factory=dict)  # seconds: "begin" (the writer stopped), "write"

    def write(self, directory: str) -> None:
        """Append the new rows to the row files and write the segment file (an error is
        kept for the writer to raise when it ends the checkpoint)."""
        t = time.perf_counter()
        try:
            if self.state is not None:
                self.index.write_state(os.path.join(directory, self.name), self.state, split=True)
        except BaseException as exc:  # noqa: BLE001 - raised again by the writer
            self.error = exc
        finally:
            self.state = None
            self.times["write"] = time.perf_counter() - t


@dataclass
class Compaction:
    """A compaction in progress: begun under the writer lock, its merged segment built and
    saved on a thread of its own, ended under the lock (``Collection._finish_compaction``)."""

    inputs: tuple[Segment, ...]   # the segments it merges, as they were when it began
    index: Index | None = None    # the merged segment (None: no live rows)
    name: str | None = None       # its file
    thread: threading.Thread | None = None
    error: BaseException | None = None

    def build(self, directory: str) -> None:
        """Link the inputs' live rows (in row-id order) into the merged index and save it
        (an error is kept for the writer to raise when it ends the compaction)."""
        try:
            if self.index is None:
                return
            parts_x, parts_u = [], []
            for seg in self.inputs:
                nodes = seg.live_nodes()
                parts_x.append(seg.view.vectors[nodes])
                parts_u.append(seg.uids[nodes])
            uids = np.concatenate(parts_u)
            order = np.argsort(uids, kind="stable")
            self.index.add(np.concatenate(parts_x)[order], ids=uids[order])
            del parts_x
            self.index.calibrate_if_stale()
            self.index.save(os.path.join(directory, self.name), calibrate=False, split=True)
        except BaseException as exc:  # noqa: BLE001 - raised again by the writer
            self.error = exc
