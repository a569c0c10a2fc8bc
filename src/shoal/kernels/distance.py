"""Distances between float32 rows. Smaller is closer for every metric.

- code 0, inner product: ``1 - <a, b>`` (cosine distance once rows are unit length);
- code 1, l2: squared Euclidean distance ``sum((a - b)**2)``.
"""

import numpy as np
from numba import njit, prange

from shoal.kernels import KERNEL, KERNEL_PARALLEL

IP = 0
L2 = 1


@njit(**KERNEL)
def distance(a, b, metric):
    """Distance between two rows of equal length under metric code ``metric``.

    Rows are float32 vectors, or int8 codes (``shoal.quantize``) whose distances order pairs as
    the vectors' do.
    """
    s = np.float32(0.0)
    if metric == IP:
        for i in range(a.shape[0]):
            s += np.float32(a[i]) * np.float32(b[i])
        return np.float32(1.0) - s
    for i in range(a.shape[0]):
        d = np.float32(a[i]) - np.float32(b[i])
        s += d * d
    return s


@njit(**KERNEL)
def distance_row(a, rows, r, metric):
    """``distance(a, rows[r], metric)`` without a row view: the graph walks call this once per
    candidate, and indexing the matrix directly keeps the loop free of array bookkeeping."""
    s = np.float32(0.0)
    if metric == IP:
        for i in range(a.shape[0]):
            s += np.float32(a[i]) * np.float32(rows[r, i])
        return np.float32(1.0) - s
    for i in range(a.shape[0]):
        d = np.float32(a[i]) - np.float32(rows[r, i])
        s += d * d
    return s


@njit(**KERNEL)
def distance_rows4(a, rows, r0, r1, r2, r3, metric):
    """``distance_row`` to four rows in one pass over ``a``: four independent sums keep the
    vector units busy where one sum waits on its own additions (about 10% of a search)."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    if metric == IP:
        for i in range(a.shape[0]):
            x = np.float32(a[i])
            s0 += x * np.float32(rows[r0, i])
            s1 += x * np.float32(rows[r1, i])
            s2 += x * np.float32(rows[r2, i])
            s3 += x * np.float32(rows[r3, i])
        one = np.float32(1.0)
        return one - s0, one - s1, one - s2, one - s3
    for i in range(a.shape[0]):
        x = np.float32(a[i])
        d0 = x - np.float32(rows[r0, i])
        d1 = x - np.float32(rows[r1, i])
        d2 = x - np.float32(rows[r2, i])
        d3 = x - np.float32(rows[r3, i])
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
    return s0, s1, s2, s3


@njit(**KERNEL)
def distances_to_list(a, rows, nodes, cnt, metric, out):
    """``out[j] = distance_row(a, rows, nodes[j], metric)`` for ``j < cnt``, four at a time."""
    j = 0
    while j + 4 <= cnt:
        out[j], out[j + 1], out[j + 2], out[j + 3] = distance_rows4(
            a, rows, nodes[j], nodes[j + 1], nodes[j + 2], nodes[j + 3], metric)
        j += 4
    while j < cnt:
        out[j] = distance_row(a, rows, nodes[j], metric)
        j += 1


@njit(**KERNEL_PARALLEL)
def distances_to_rows(query, vectors, nodes, metric):
    """float32 (len(nodes),): distance from ``query`` to ``vectors[nodes[i]]``."""
    out = np.empty(nodes.shape[0], np.float32)
    for i in prange(nodes.shape[0]):
        out[i] = distance(query, vectors[nodes[i]], metric)
    return out


@njit(**KERNEL_PARALLEL)
def pair_distances(queries, rows, cols, metric):
    """float32 (nq, c): distance from ``queries[i]`` to ``rows[cols[i, j]]``, for cols >= 0
    (+inf elsewhere), in parallel over queries."""
    out = np.full(cols.shape, np.inf, np.float32)
    for i in prange(cols.shape[0]):
        for j in range(cols.shape[1]):
            if cols[i, j] >= 0:
                out[i, j] = distance(queries[i], rows[cols[i, j]], metric)
    return out


@njit(**KERNEL_PARALLEL)
def row_norms(x):
    """float32 (n,): Euclidean norm of each row of ``x`` (n, d), accumulated in float64."""
    out = np.empty(x.shape[0], np.float32)
    for i in prange(x.shape[0]):
        s = 0.0
        for j in range(x.shape[1]):
            s += np.float64(x[i, j]) * x[i, j]
        out[i] = np.sqrt(s)
    return out


@njit(cache=True, nogil=True)
def first_nonfinite_row(x):
    """Index of the first row of ``x`` (n, d) holding NaN or Inf, or -1 (no fastmath: it must see NaN)."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if not np.isfinite(x[i, j]):
                return i
    return -1


@njit(cache=True, nogil=True)
def checked_rows(x, normalize):
    """A float32 copy of ``x`` (n, d), each row divided by its (float32) norm when
    ``normalize``; with the first row holding NaN or Inf (or -1) and the first zero row under
    ``normalize`` (or -1). One pass for a query's checks (no fastmath: it must see NaN)."""
    n, d = x.shape
    out = np.empty((n, d), np.float32)
    for i in range(n):
        s = 0.0
        for j in range(d):
            v = x[i, j]
            if not np.isfinite(v):
                return out, i, -1
            s += np.float64(v) * v
        if normalize:
            if s == 0.0:
                return out, -1, i
            norm = np.float32(np.sqrt(s))
            for j in range(d):
                out[i, j] = np.float32(x[i, j]) / norm
        else:
            for j in range(d):
                out[i, j] = x[i, j]
    return out, -1, -1
