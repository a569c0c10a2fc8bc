"""Row files: a segment's float32 vectors (and its search codes) as raw rows that are written
once, appended at checkpoints, and never rewritten.

A row file holds fixed-width rows from offset 0 and nothing else; its length may run past
the rows that count (an append a crash interrupted, or room a memory map reserved). The
index file that names it records how many rows count and the CRC32 of their bytes
(``shoal.storage.format``, external sections), so a checkpoint writes only the rows added
since the last one: its cost follows what changed, not the segment's size.

A collection that keeps its vectors on disk memory-maps the same file (``map_rows``): the
index writes new rows straight into the mapping, the operating system pages the rows in and
out as searches need them, and a checkpoint's append writes the same bytes over themselves
and syncs them. Every write goes through ``shoal.storage.files`` (observable, injectable).
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from shoal.storage import files


class RowFile:
    """Appends rows to a file and keeps the count and running CRC32 of the rows written.

    ``RowFile(path, rows, crc)`` continues a file whose first ``rows`` rows (with that CRC)
    are durable; rows past them are overwritten by the next append."""

    def __init__(self, path: str, rows: int = 0, crc: int = 0) -> None:
        self.path = os.path.abspath(path)
        self.name = os.path.basename(self.path)
        self.rows = rows
        self.crc = crc

    def append(self, rows: np.ndarray) -> None:
        """Write ``rows`` (C-contiguous) after the counted rows and fsync the file. A new file
        is created, and its directory synced, on the first append."""
        data = memoryview(np.ascontiguousarray(rows)).cast("B")
        width = data.nbytes // max(len(rows), 1)
        new = not os.path.exists(self.path)
        if new:
            files.event("create", self.path)
        with open(self.path, "r+b" if not new else "w+b") as f:
            f.seek(self.rows * width)
            if data.nbytes:
                files.write(f, data)
            files.fsync(f)
        if new:
            files.fsync_directory(os.path.dirname(self.path))
        self.crc = zlib.crc32(data, self.crc) & 0xFFFFFFFF
        self.rows += len(rows)


def map_rows(path: str, dtype: np.dtype, width: int, capacity: int) -> np.ndarray:
    """A writable shared memory map of ``capacity`` rows of ``path`` (created or lengthened
    as needed, never shortened): rows written to it reach the file through the page cache,
    and are durable once a ``RowFile.append`` of them has synced."""
    nbytes = capacity * width * np.dtype(dtype).itemsize
    if not os.path.exists(path):
        files.event("create", path)
        open(path, "wb").close()
    if os.path.getsize(path) < nbytes:
        with open(path, "r+b") as f:
            files.truncate(f, nbytes)
    if capacity == 0:
        return np.zeros((0, width), dtype)
    return np.memmap(path, dtype=dtype, mode="r+", shape=(capacity, width))
