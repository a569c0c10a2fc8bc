"""Exact k-nearest search over a block of rows: BLAS picks the candidates, the kernel's
distance ranks them, so exact results use the same distance convention as graph search."""

from __future__ import annotations

import numpy as np

from shoal import _blas
from shoal.kernels.distance import L2, pair_distances


def exact_top_k(queries: np.ndarray, rows: np.ndarray, k: int, metric: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``rows`` (int64, -1 padded) and distances (float32, +inf padded) of each
    query's ``k`` nearest rows. ``queries`` (nq, d) and ``rows`` (n, d) are float32."""
    nq, n = queries.shape[0], rows.shape[0]
    out_p = np.full((nq, k), -1, np.int64)
    out_d = np.full((nq, k), np.inf, np.float32)
    if n == 0 or nq == 0:
        return out_p, out_d
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    sq = (rows * rows).sum(axis=1) if metric == L2 else None
    take = min(k, n)
    step = max(1, (1 << 24) // n)  # about 64 MB of scores at a time
    for lo in range(0, nq, step):
        with _blas.single_thread():
            scores = queries[lo:lo + step] @ rows.T  # larger is closer (ip) ...
        if sq is not None:
            scores = 2 * scores - sq  # ... and for l2, -(|r|^2 - 2 q.r) orders alike
        if take < n:
            cols = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        else:
            cols = np.broadcast_to(np.arange(n), scores.shape)
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        d = pair_distances(queries[lo:lo + step], rows, cols, metric)
        order = np.argsort(d, axis=1, kind="stable")
        out_p[lo:lo + step, :take] = np.take_along_axis(cols, order, 1)
        out_d[lo:lo + step, :take] = np.take_along_axis(d, order, 1)
    return out_p, out_d
