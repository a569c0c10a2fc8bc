"""Readers for bulk imports: a file of points as batches of (ids, vectors, payloads).

``.npy``: an (n, dim) array, ids 0..n-1, no payloads. ``.jsonl``: one ``{"id", "vector", ...}``
object a line (a ``"payload"`` object, or else the other fields, is the payload). ``.parquet``:
a vector column, an optional id column, the other columns as payload (needs pyarrow:
``shoal[parquet]``). Used by the ``shoal import`` command and by sharded imports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shoal import errors


def batches_npy(path: Path, batch: int) -> tuple[int, Iterator[tuple[list, np.ndarray, list]]]:
    x = np.load(path, mmap_mode="r")
    if x.ndim != 2:
        raise errors.InvalidArgumentError(f"{path}: expected a 2-D array of vectors, got shape {x.shape}")

    def gen():
        for lo in range(0, x.shape[0], batch):
            hi = min(lo + batch, x.shape[0])
            yield list(range(lo, hi)), np.asarray(x[lo:hi], np.float32), [None] * (hi - lo)
    return x.shape[0], gen()


def split_record(rec: dict, id_field: str, vector_field: str, where: str) -> tuple[Any, Any, dict]:
    if not isinstance(rec, dict) or id_field not in rec or vector_field not in rec:
        raise errors.InvalidArgumentError(f"{where}: needs {id_field!r} and {vector_field!r} fields")
    payload = rec.get("payload")
    if payload is None:
        payload = {k: v for k, v in rec.items() if k not in (id_field, vector_field)}
    return rec[id_field], rec[vector_field], payload


def batches_jsonl(path: Path, batch: int, id_field: str, vector_field: str):
    with open(path, encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip())

    def gen():
        ids, vecs, pays = [], [], []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise errors.InvalidArgumentError(f"{path}:{n}: not JSON ({exc.msg})") from None
                i, v, p = split_record(rec, id_field, vector_field, f"{path}:{n}")
                ids.append(i)
                vecs.append(v)
                pays.append(p)
                if len(ids) == batch:
                    yield ids, np.array(vecs, np.float32), pays
                    ids, vecs, pays = [], [], []
        if ids:
            yield ids, np.array(vecs, np.float32), pays
    return total, gen()


def batches_parquet(path: Path, batch: int, id_field: str, vector_field: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise errors.InvalidArgumentError("reading Parquet needs pyarrow: pip install 'shoal[parquet]'") from None
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if vector_field not in names:
        raise errors.InvalidArgumentError(f"{path}: no column {vector_field!r} (columns: {names})")

    def gen():
        start = 0
        for rb in pf.iter_batches(batch_size=batch):
            cols = rb.to_pydict()
            vecs = np.array(cols.pop(vector_field), np.float32)
            n = len(vecs)
            ids = cols.pop(id_field) if id_field in cols else list(range(start, start + n))
            pays = [{k: cols[k][i] for k in cols} for i in range(n)]
            start += n
            yield ids, vecs, pays
    return pf.metadata.num_rows, gen()


def batches(path: Path, batch: int, id_field: str = "id", vector_field: str = "vector"):
    """(number of points, iterator of (ids, vectors, payloads) batches) of a .npy, .jsonl or
    .parquet file; the format comes from the suffix."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if suffix == ".npy":
        return batches_npy(path, batch)
    if suffix in (".jsonl", ".ndjson"):
        return batches_jsonl(path, batch, id_field, vector_field)
    if suffix == ".parquet":
        return batches_parquet(path, batch, id_field, vector_field)
    raise errors.InvalidArgumentError(f"{path}: unknown format {suffix!r} (use .npy, .jsonl or .parquet)")
