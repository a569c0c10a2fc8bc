"""The collection's log records: what an upsert or a delete writes to the write-ahead log.

``UPSERT`` (kind 1)::

    uint32 N, N bytes of JSON {"uids": [...], "keys": [...], "payloads": [JSON texts],
    "documents": [text or null] (only when some row has one)}, then the vectors as
    little-endian float32 (rows, dim), already normalised for cosine

``DELETE`` (kind 2): the deleted row ids as little-endian int64.

Replaying the records after a checkpoint, in order, rebuilds every write since it.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import orjson

from shoal.db.payloads import Key
from shoal.errors import CorruptIndexError

UPSERT = 1
DELETE = 2


def encode_upsert(uids: np.ndarray, keys: list[Key], payloads: list[str], x: np.ndarray,
                  documents: list[str | None] | None = None) -> bytes:
    record = {"uids": uids.tolist(), "keys": keys, "payloads": payloads}
    if documents is not None:
        record["documents"] = documents
    try:
        head = orjson.dumps(record)
    except TypeError:  # a key orjson refuses (a lone surrogate): the standard library escapes it
        head = json.dumps(record).encode()
    return struct.pack("<I", len(head)) + head + x.astype("<f4").tobytes()


def decode_upsert(blob: bytes, dim: int) -> tuple[np.ndarray, list[Key], list[str], np.ndarray,
                                                  list[str | None] | None]:
    try:
        (size,) = struct.unpack_from("<I", blob)
        text = blob[4:4 + size]
        try:
            head = orjson.loads(text)
        except ValueError:  # written by the standard library (see encode_upsert)
            head = json.loads(text)
        x = np.frombuffer(blob, dtype="<f4", offset=4 + size).reshape(-1, dim).astype(np.float32)
        uids = np.array(head["uids"], np.int64)
        documents = head.get("documents")
        if not (uids.size == len(head["keys"]) == len(head["payloads"]) == x.shape[0]) or (
                documents is not None and len(documents) != uids.size):
            raise ValueError("uids, keys, payloads, documents and vectors differ in length")
    except (ValueError, KeyError, struct.error) as exc:  # a CRC-valid record that does not decode
        raise CorruptIndexError(f"a log record does not decode as an upsert: {exc}") from None
    return uids, head["keys"], head["payloads"], x, documents


def encode_delete(uids: np.ndarray) -> bytes:
    return uids.astype("<i8").tobytes()


def decode_delete(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, "<i8").astype(np.int64)
