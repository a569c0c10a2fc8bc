"""A write-ahead log: length-prefixed, CRC32-checked records, fsynced before a write returns.

File layout (little-endian), format version 1::

    header  8 bytes magic b"SHOALWAL", uint32 format version, uint64 first sequence number
    record  uint32 payload length N, uint32 CRC32 of (seq, kind, payload),
            uint64 sequence number, uint8 kind, N bytes payload

Sequence numbers are consecutive from the header's first one. A record is acknowledged when
``append`` returns: by then it has been written and fsynced (``sync=False`` leaves the fsync
to a later ``sync()``, for callers that group writes). Opening a log reads it from the start
and keeps the longest valid prefix: a record that is cut short (a crash mid-write), fails its
CRC, or breaks the sequence ends the log there; the file is truncated to that point with a
``WalTruncatedWarning``, never an exception. The payload is opaque bytes.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from shoal.errors import CorruptIndexError, InvalidArgumentError

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


def fsync_directory(path: str) -> None:
    """fsync a directory so that a file created or renamed in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
                self.truncated_bytes = size - end
                warnings.warn(f"{self.path}: cut {size - end} bytes of damaged or unfinished log "
                              f"tail after sequence {self.last_seq}", WalTruncatedWarning, stacklevel=2)
                self._file.truncate(end)
                os.fsync(self._file.fileno())
            self._file.seek(end)
        except BaseException:
            self._file.close()
            raise

    def _create(self, first_seq: int) -> None:
        if first_seq < 1:
            raise InvalidArgumentError(f"first_seq must be >= 1, got {first_seq}")
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(MAGIC, VERSION, first_seq))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_directory(os.path.dirname(os.path.abspath(self.path)))

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
        self._file.write(_RECORD.pack(len(payload), _crc(seq, kind, payload), seq, kind) + payload)
        self._records.append((offset, len(payload)))
        if sync:
            self.sync()
        return seq

    def sync(self) -> None:
        """Make every appended record durable."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def records(self, after: int = 0) -> Iterator[Record]:
        """The records with sequence number > ``after``, in order."""
        start = max(after + 1 - self.first_seq, 0)
        self._file.flush()
        with open(self.path, "rb") as f:
            for offset, length in self._records[start:]:
                f.seek(offset)
                _, _, seq, kind = _RECORD.unpack(f.read(_RECORD.size))
                yield Record(seq, kind, f.read(length))

    def close(self) -> None:
        if not self._file.closed:
            if not self.read_only:
                self.sync()
            self._file.close()

    def __enter__(self) -> "WriteAheadLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
