"""A write-ahead log: length-prefixed, CRC32-checked records, fsynced before a write returns.

File layout (little-endian), format version 1::

    header  8 bytes magic b"SHOALWAL", uint32 format version, uint64 first sequence number
    record  uint32 payload length N, uint32 CRC32 of (seq, kind, payload),
            uint64 sequence number, uint8 kind, N bytes payload

Sequence numbers are consecutive from the header's first one. A record is acknowledged when
``append`` returns: by then it has been written and fsynced (``sync=False`` leaves the fsync
to a later ``sync()``, for callers that group writes). Opening a log reads it from the start.
A damaged or unfinished *tail* (a crash mid-write: the last record cut short, or bytes that
were never synced) is cut off with a ``WalTruncatedWarning``. Damage *followed by a valid
record* is not a crash's doing: the log refuses to open with ``CorruptIndexError`` naming the
file and byte offset and leaves the file as it is; ``salvage_log`` is the explicit way out
(it keeps the valid prefix and moves the damaged file aside, never deleting it). The payload
is opaque bytes. Every write, fsync and truncation goes through ``shoal.storage.files``.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from shoal.errors import CorruptIndexError, InvalidArgumentError
from shoal.storage import files

MAGIC = b"SHOALWAL"
VERSION = 1
_HEADER = struct.Struct("<8sIQ")
_RECORD = struct.Struct("<IIQB")  # length, crc, seq, kind
MAX_PAYLOAD = 1 << 31


class WalTruncatedWarning(UserWarning):
    """A log's damaged or unfinished tail was cut off when it was opened."""


@dataclass(frozen=True)
class Record:
    seq: int
    kind: int
    payload: bytes


def _crc(seq: int, kind: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<QB", seq, kind))) & 0xFFFFFFFF


class WriteAheadLog:
    """Append-only log of (kind, payload) records with consecutive sequence numbers.

    ``WriteAheadLog(path)`` creates the file (starting at ``first_seq``) or opens an existing
    one, recovering its valid prefix. Not safe for concurrent writers: the database holds the
    writer lock.
    """

    def __init__(self, path: str | os.PathLike, *, first_seq: int = 1, read_only: bool = False) -> None:
        self.path = os.fspath(path)
        self.truncated_bytes = 0
        self.read_only = read_only
        if not os.path.exists(self.path) and not read_only:
            self._create(first_seq)
        self._file = open(self.path, "rb" if read_only else "r+b")
        try:
            self.first_seq, self._records, end = self._scan()
            size = os.fstat(self._file.fileno()).st_size
            if end < size and not read_only:  # a reader leaves a live writer's tail alone
                after = _next_valid_record(self._file, end, self.last_seq + 1, size)
                if after is not None:
                    raise CorruptIndexError(
                        f"{self.path}: record {self.last_seq + 1} at byte offset {end} is damaged, "
                        f"but a valid record follows at byte offset {after}: acknowledged writes "
                        "after the damage would be lost. The file is left as it is; "
                        "`shoal repair DB` (or shoal.open(path, recover=True)) keeps the records "
                        "before the damage and moves the damaged log aside")
                self.truncated_bytes = size - end
                warnings.warn(f"{self.path}: cut {size - end} bytes of damaged or unfinished log "
                              f"tail after sequence {self.last_seq}", WalTruncatedWarning, stacklevel=2)
                files.truncate(self._file, end)
                files.fsync(self._file)
            self._file.seek(end)
        except BaseException:
            self._file.close()
            raise

    def _create(self, first_seq: int) -> None:
        if first_seq < 1:
            raise InvalidArgumentError(f"first_seq must be >= 1, got {first_seq}")
        files.replace_atomically(self.path, [_HEADER.pack(MAGIC, VERSION, first_seq)])

    def _scan(self) -> tuple[int, list[tuple[int, int]], int]:
        """(first seq, [(offset, length)] of valid records, end of the valid prefix)."""
        f = self._file
        f.seek(0)
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            raise CorruptIndexError(f"{self.path}: too short to be a shoal log")
        magic, version, first = _HEADER.unpack(head)
        if magic != MAGIC:
            raise CorruptIndexError(f"{self.path}: not a shoal log (bad magic {magic!r})")
        if version != VERSION:
            raise CorruptIndexError(f"{self.path}: log format version {version} is not supported")
        records: list[tuple[int, int]] = []
        offset = _HEADER.size
        expect = first
        size = os.fstat(f.fileno()).st_size
        while True:
            raw = f.read(_RECORD.size)
            if len(raw) < _RECORD.size:
                break
            length, crc, seq, kind = _RECORD.unpack(raw)
            if seq != expect or offset + _RECORD.size + length > size:  # damaged, or cut short
                break
            payload = f.read(length)
            if len(payload) < length or _crc(seq, kind, payload) != crc:
                break
            records.append((offset, length))
            offset += _RECORD.size + length
            expect += 1
        return first, records, offset

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record (first_seq - 1 when empty)."""
        return self.first_seq + len(self._records) - 1

    def __len__(self) -> int:
        return len(self._records)

    def append(self, kind: int, payload: bytes, *, sync: bool = True) -> int:
        """Write one record; returns its sequence number once it is durable (with ``sync``)."""
        if self.read_only:
            raise InvalidArgumentError(f"{self.path} is open read-only")
        if not 0 <= kind <= 255:
            raise InvalidArgumentError(f"kind must be in 0..255, got {kind}")
        payload = bytes(payload)
        if len(payload) > MAX_PAYLOAD:
            raise InvalidArgumentError(f"a log record holds at most {MAX_PAYLOAD} bytes")
        seq = self.last_seq + 1
        offset = self._file.tell()
        files.write(self._file, _RECORD.pack(len(payload), _crc(seq, kind, payload), seq, kind) + payload)
        self._records.append((offset, len(payload)))
        if sync:
            self.sync()
        return seq

    def sync(self) -> None:
        """Make every appended record durable."""
        files.fsync(self._file)

    def restart_after(self, seq: int) -> None:
        """Start the log afresh after record ``seq`` (a checkpoint holds it and those before),
        keeping the records after it: a new file with them is written beside this one,
        fsynced and renamed over it. A reader that opened the old file keeps reading it."""
        if not self.first_seq - 1 <= seq <= self.last_seq:
            raise InvalidArgumentError(f"seq {seq} is outside the log ({self.first_seq}..{self.last_seq})")
        keep = self._records[seq + 1 - self.first_seq:]
        self._file.flush()
        end = self._file.tell()
        start = keep[0][0] if keep else end
        tail = os.pread(self._file.fileno(), end - start, start)
        files.replace_atomically(self.path, [_HEADER.pack(MAGIC, VERSION, seq + 1), tail])
        self._file.close()
        self._file = open(self.path, "r+b")
        self._file.seek(0, os.SEEK_END)
        shift = _HEADER.size - start
        self._records = [(offset + shift, length) for offset, length in keep]
        self.first_seq = seq + 1

    def records(self, after: int = 0) -> Iterator[Record]:
        """The records with sequence number > ``after``, in order."""
        start = max(after + 1 - self.first_seq, 0)
        self._file.flush()
        fd = self._file.fileno()  # the open file, even if a writer has since replaced the path
        for offset, length in self._records[start:]:
            raw = os.pread(fd, _RECORD.size + length, offset)
            _, _, seq, kind = _RECORD.unpack_from(raw)
            yield Record(seq, kind, raw[_RECORD.size:])

    def close(self, *, sync: bool = True) -> None:
        """Close the file (after an fsync unless ``sync=False``, which a collection that
        failed uses: it must not touch its files again)."""
        if not self._file.closed:
            try:
                if sync and not self.read_only:
                    self.sync()
            finally:
                self._file.close()

    def __enter__(self) -> "WriteAheadLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _next_valid_record(f, start: int, first_seq: int, size: int) -> int | None:
    """Offset of the first valid record (whole, CRC-checked, sequence number >= ``first_seq``)
    that starts after byte ``start``, or None. Candidates are found with numpy (a uint64 at
    offset +8 within the range of possible sequence numbers), then checked one by one."""
    f.seek(start)
    tail = f.read(size - start)
    most = first_seq + len(tail) // _RECORD.size
    for align in range(min(8, len(tail))):
        words = np.frombuffer(tail, "<u8", count=(len(tail) - align) // 8, offset=align)
        for i in np.flatnonzero((words >= first_seq) & (words <= most)).tolist():
            rel = align + 8 * i - 8  # the seq field is at +8 in a record's header
            if rel <= 0 or rel + _RECORD.size > len(tail):
                continue
            length, crc, seq, kind = _RECORD.unpack_from(tail, rel)
            body = rel + _RECORD.size
            if body + length <= len(tail) and _crc(seq, kind, tail[body:body + length]) == crc:
                return start + rel
    return None


def salvage_log(path: str | os.PathLike) -> tuple[int, str | None]:
    """Keep the valid prefix of a log whose middle is damaged: the whole file is moved aside
    to ``PATH.damaged-N`` (never deleted) and ``PATH`` is rewritten with the records before
    the damage. Returns (records kept, the damaged file's new path or None if the log was
    not damaged)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        probe = WriteAheadLog.__new__(WriteAheadLog)
        probe.path, probe._file = path, f
        first, records, end = probe._scan()
        size = os.fstat(f.fileno()).st_size
        if end == size or _next_valid_record(f, end, first + len(records), size) is None:
            return len(records), None
        f.seek(0)
        whole = f.read()
    n = 1
    while os.path.exists(f"{path}.damaged-{n}"):
        n += 1
    aside = f"{path}.damaged-{n}"
    files.replace_atomically(aside, [whole])  # a copy first: the records stay on disk throughout
    files.replace_atomically(path, [whole[:end]])
    return len(records), aside
