"""The ``.shoal`` index file, format versions 2 and 3 (version 1 files are read too).

Layout (all integers little-endian)::

    offset 0   8 bytes   magic b"SHOALIDX"
    offset 8   uint32    format version (2)
    offset 12  uint32    header length H in bytes
    offset 16  uint32    CRC32 of the header bytes
    offset 20  H bytes   header: UTF-8 JSON object (below)
    ...        sections, each starting at a multiple of 64 bytes, in the order listed

The header holds ``dim``, ``metric``, ``m``, ``ef_construction``, ``seed``, ``count`` (nodes),
``pool_count`` (upper-level rows), ``entry`` (entry node, -1 when empty), ``top_level``,
``rng_state`` (the level generator's state, so later adds draw the same levels), ``quantize``
(``"sq8"`` or null; version 2), ``calibration`` (``Index.calibration``, or null; version 2)
and ``sections``: a list of ``{name, dtype, shape, offset, nbytes, crc32}``. Sections:

    vectors    <f4 (count, dim)    stored rows (unit length under cosine)
    ids        <i8 (count,)        user ids by node
    levels     |i1 (count,)        top level by node
    links0     <i4 (count, 2m)     level-0 neighbours, -1 past the degree
    deg0       <i4 (count,)        level-0 degrees
    up_offset  <i4 (count,)        first upper-pool row of a node, -1 for level 0 only
    links_up   <i4 (pool, m)       upper-level neighbours
    deg_up     <i4 (pool,)         upper-level degrees
    codes      |u1 (count, dim)    search codes (with quantize "sq8"; version 2)
    code_lo    <f4 (dim,)          value of code 0 by column
    code_step  <f4 (dim,)          value of one code step by column

A version 1 file has neither ``quantize`` nor the code sections: its codes are computed when
it is loaded.

Version 3 (written only when it is needed) lets a section live in a file of its own beside
the index file: its table entry names the ``file`` (in the same directory) instead of an
``offset``, and the section is that file's first ``nbytes`` bytes, checked by its CRC32 as
any other. Collections keep their vectors and codes so (``shoal.storage.rows``): those files
only grow, and a checkpoint rewrites the links and this header, not the rows.

A file is written to a temporary name beside the target, fsynced, renamed over the target, and
the directory fsynced. A reader checks the magic, version, header CRC, that every section lies
inside the file, each section's CRC32, and the graph's invariants (so that a damaged file can
never make a kernel read out of bounds).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

import numpy as np

from shoal.errors import CorruptIndexError
from shoal.storage import files

MAGIC = b"SHOALIDX"
VERSION = 2
EXTERNAL_VERSION = 3  # a file with external sections
READS = (1, 2, 3)
ALIGN = 64
_PREFIX = struct.Struct("<8sIII")

SECTIONS = {  # name -> (dtype, shape from the header's numbers)
    "vectors": ("<f4", lambda h: (h["count"], h["dim"])),
    "ids": ("<i8", lambda h: (h["count"],)),
    "levels": ("|i1", lambda h: (h["count"],)),
    "links0": ("<i4", lambda h: (h["count"], 2 * h["m"])),
    "deg0": ("<i4", lambda h: (h["count"],)),
    "up_offset": ("<i4", lambda h: (h["count"],)),
    "links_up": ("<i4", lambda h: (h["pool_count"], h["m"])),
    "deg_up": ("<i4", lambda h: (h["pool_count"],)),
}
#: Sections present when the header's ``quantize`` is set.
CODE_SECTIONS = {
    "codes": ("|u1", lambda h: (h["count"], h["dim"])),
    "code_lo": ("<f4", lambda h: (h["dim"],)),
    "code_step": ("<f4", lambda h: (h["dim"],)),
}
_INT_FIELDS = ("dim", "m", "ef_construction", "seed", "count", "pool_count", "entry", "top_level")


def _bytes(arr: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def _crc(arr: np.ndarray) -> int:
    return zlib.crc32(_bytes(arr)) & 0xFFFFFFFF


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def write_index(path: str | os.PathLike, header: dict[str, Any], sections: dict[str, np.ndarray],
                external: dict[str, tuple[str, int]] | None = None) -> None:
    """Write ``sections`` (named as in SECTIONS, and CODE_SECTIONS when the header has
    ``quantize``) and ``header`` to ``path`` atomically. ``external`` maps section names to
    (file name beside ``path``, CRC32) of sections already written there (their arrays in
    ``sections`` give only the shape)."""
    path = os.fspath(path)
    kinds = _kinds(header)
    external = external or {}
    table = []
    arrays = {}
    for name, (dtype, _) in kinds.items():
        shape = list(np.shape(sections[name]))
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if name in external:
            file, crc = external[name]
            table.append({"name": name, "dtype": dtype, "shape": shape, "file": file,
                          "nbytes": nbytes, "crc32": int(crc)})
        else:
            arrays[name] = np.ascontiguousarray(sections[name], dtype=dtype)
            table.append({"name": name, "dtype": dtype, "shape": shape, "offset": 0,
                          "nbytes": nbytes, "crc32": _crc(arrays[name])})
    inline = [entry for entry in table if "file" not in entry]
    version = EXTERNAL_VERSION if external else VERSION
    # Offsets depend on the header's length, which depends on the offsets' digits: iterate.
    size = 0
    while True:
        offset = _align(_PREFIX.size + size)
        for entry in inline:
            entry["offset"] = offset
            offset = _align(offset + entry["nbytes"])
        blob = json.dumps({**header, "format_version": version, "sections": table},
                          sort_keys=True).encode()
        if len(blob) == size:
            break
        size = len(blob)
    def chunks():
        yield _PREFIX.pack(MAGIC, version, len(blob), zlib.crc32(blob) & 0xFFFFFFFF)
        yield blob
        at = _PREFIX.size + len(blob)
        for entry, arr in zip(inline, arrays.values()):
            yield b"\0" * (entry["offset"] - at)
            yield _bytes(arr)
            at = entry["offset"] + entry["nbytes"]

    files.replace_atomically(path, chunks())


def _kinds(header: dict[str, Any]) -> dict[str, tuple]:
    return {**SECTIONS, **CODE_SECTIONS} if header.get("quantize") else SECTIONS


def _parse_header(path: str, f) -> dict[str, Any]:
    prefix = f.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise CorruptIndexError(f"{path}: too short to be a shoal index ({len(prefix)} bytes)")
    magic, version, size, crc = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise CorruptIndexError(f"{path}: not a shoal index (bad magic {magic!r})")
    if version not in READS:
        raise CorruptIndexError(f"{path}: format version {version} is not supported "
                                f"(this shoal reads versions {', '.join(map(str, READS))})")
    blob = f.read(size)
    if len(blob) != size or zlib.crc32(blob) & 0xFFFFFFFF != crc:
        raise CorruptIndexError(f"{path}: header is truncated or damaged (CRC mismatch)")
    try:
        header = json.loads(blob)
        for name in _INT_FIELDS:
            if not isinstance(header[name], int):
                raise TypeError(name)
        if header["dim"] < 1 or header["m"] < 2 or header["count"] < 0 or header["pool_count"] < 0:
            raise ValueError("sizes")
        if header["metric"] not in ("cosine", "ip", "l2"):
            raise ValueError("metric")
        if header.setdefault("quantize", None) not in ("sq8", None):
            raise ValueError("quantize")
        cal = header.setdefault("calibration", None)
        if cal is not None and not (isinstance(cal, dict) and isinstance(cal.get("default_ef"), int)
                                    and cal["default_ef"] >= 1 and isinstance(cal.get("efs"), list)
                                    and isinstance(cal.get("recall"), list)
                                    and isinstance(cal.get("count"), int)):
            raise ValueError("calibration")
        table = {entry["name"]: entry for entry in header["sections"]}
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptIndexError(f"{path}: header is malformed ({exc})") from None
    header["sections"] = table
    header["format_version"] = version
    return header


def read_index(path: str | os.PathLike, *, mmap: bool = False,
               verify: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a file written by ``write_index``; returns (header, sections).

    With ``mmap`` the vectors are a read-only memory map; ``verify`` checks their CRC too.
    Raises ``CorruptIndexError`` for any damage to the file, ``FileNotFoundError`` for a
    missing file (or a missing external section's file); the graph's own invariants are
    ``Index.check_integrity``'s to check.
    """
    path = os.fspath(path)
    sections: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        header = _parse_header(path, f)
        for name, (dtype, shape_of) in _kinds(header).items():
            entry = header["sections"].get(name)
            shape = shape_of(header)
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            external = isinstance(entry, dict) and header["format_version"] >= EXTERNAL_VERSION \
                and isinstance(entry.get("file"), str)
            if entry is None or entry.get("dtype") != dtype or list(entry.get("shape", ())) != list(shape) \
                    or entry.get("nbytes") != nbytes or not (external or (
                        isinstance(entry.get("offset"), int) and entry["offset"] >= 0)) \
                    or (external and os.path.basename(entry["file"]) != entry["file"]):
                raise CorruptIndexError(f"{path}: section {name!r} is missing or malformed")
            if external:
                where = os.path.join(os.path.dirname(path), entry["file"])
                arr = _read_section(where, 0, name, dtype, shape, nbytes, mmap)
            else:
                arr = _read_section(path, entry["offset"], name, dtype, shape, nbytes, mmap, f)
            if (verify or not (mmap and name == "vectors")) and _crc(arr) != entry.get("crc32"):
                raise CorruptIndexError(f"{path}: section {name!r} is damaged (CRC32 mismatch)")
            sections[name] = arr.astype(np.dtype(dtype).newbyteorder("="), copy=False)
    return header, sections


def _read_section(path: str, offset: int, name: str, dtype: str, shape: tuple, nbytes: int,
                  mmap: bool, f=None) -> np.ndarray:
    """Bytes ``offset .. offset+nbytes`` of ``path`` (open as ``f``, if given) as an array:
    memory-mapped for the vectors with ``mmap``, else read."""
    file_size = os.path.getsize(path)
    if offset + nbytes > file_size:
        raise CorruptIndexError(f"{path}: truncated: section {name!r} needs bytes up to "
                                f"{offset + nbytes}, the file has {file_size}")
    if mmap and name == "vectors" and nbytes:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    # Read straight into a NumPy array: no second copy, and NumPy asks the kernel for huge
    # pages for large arrays (a search over a loaded index misses the TLB less: up to 1.3x
    # QPS measured on WordNet, vs a bytes-backed array).
    arr = np.empty(shape, dtype)
    own = f is None
    f = open(path, "rb") if own else f
    try:
        f.seek(offset)
        if nbytes and f.readinto(memoryview(arr).cast("B")) != nbytes:
            raise CorruptIndexError(f"{path}: truncated: section {name!r} is short")
    finally:
        if own:
            f.close()
    return arr
