"""Compact codes of the stored rows: int8 codes for graph construction, uint8 codes (SQ8) for
search (below).

Building the graph moves one row per distance evaluation, mostly from RAM: a 384-d float32 row
is 24 cache lines, its int8 code 6. Construction only compares distances that share an endpoint
(a node against its candidates), so codes that preserve those orderings closely build a graph
as good as float32 rows do.

- inner product: ``code = round(x * 127 / max|x|)``: one positive scale keeps every product's
  sign and order (no centering: it would add a term that depends on the second row);
- l2: the same after subtracting the mean row (distances are translation-invariant).
"""

import numpy as np
from numba import njit, prange

from shoal.kernels import KERNEL, KERNEL_PARALLEL
from shoal.kernels.distance import L2


@njit(**KERNEL_PARALLEL)
def quantize_rows(x, center, scale):
    """int8 (n, d): ``clip(round((x - center) * scale), -127, 127)`` row by row."""
    n, d = x.shape
    out = np.empty((n, d), np.int8)
    for i in prange(n):
        for j in range(d):
            v = np.rint((x[i, j] - center[j]) * scale)
            out[i, j] = np.int8(min(127.0, max(-127.0, v)))
    return out


@njit(**KERNEL_PARALLEL)
def max_abs_deviation(x, center):
    """float32: max |x[i, j] - center[j]| over the matrix, without a temporary copy."""
    n, d = x.shape
    peaks = np.zeros(n, np.float32)
    for i in prange(n):
        p = np.float32(0.0)
        for j in range(d):
            p = max(p, abs(x[i, j] - center[j]))
        peaks[i] = p
    return peaks.max() if n else np.float32(0.0)


def code_params(x: np.ndarray, metric: int, margin: float = 1.0) -> tuple[np.ndarray, np.float32]:
    """(center, scale) of codes for the float32 rows ``x`` (n, d) under ``metric``; ``margin``
    > 1 leaves room for later rows with larger values."""
    center = x.mean(axis=0, dtype=np.float64).astype(np.float32) if metric == L2 and len(x) else \
        np.zeros(x.shape[1], np.float32)
    peak = float(max_abs_deviation(x, center)) * margin
    return center, np.float32(127.0 / peak) if peak > 0 else np.float32(1.0)


def int8_codes(x: np.ndarray, metric: int) -> np.ndarray:
    """Codes of the float32 rows ``x`` (n, d) for construction under ``metric``."""
    center, scale = code_params(x, metric)
    return quantize_rows(x, center, scale)


# ----------------------------------------------------------------------------- search codes
# Search walks the graph on uint8 codes, one per dimension (SQ8): ``x[j] ~ lo[j] + step[j] *
# code[j]``. A query is not coded: it is prepared once (``prepare_query``) so that the kernels'
# own ``distance`` between the prepared query and a code orders rows as the distance to the
# decoded row does:
#
# - inner product: ``w = q * step``; ``1 - <w, code> = 1 - <q, x~> + <q, lo>``, and ``<q, lo>``
#   is the same for every row;
# - l2: one step for all dimensions, ``w = (q - lo) / step``; ``|w - code|^2 = |q - x~|^2 / step^2``.
#
# The walk's beam is then ranked again with the float32 rows (``rerank``), so codes only decide
# which rows are looked at, never the distances returned.


@njit(**KERNEL_PARALLEL)
def encode_sq8(x, lo, step):
    """uint8 (n, d): ``clip(round((x - lo) / step), 0, 255)`` row by row."""
    n, d = x.shape
    out = np.empty((n, d), np.uint8)
    inv = np.float32(1.0) / step
    for i in prange(n):
        for j in range(d):
            v = np.rint((x[i, j] - lo[j]) * inv[j])
            out[i, j] = np.uint8(min(255.0, max(0.0, v)))
    return out


@njit(**KERNEL_PARALLEL)
def column_ranges(x):
    """float32 (d,), (d,): the smallest and largest value of each column of ``x`` (n, d)
    (+inf / -inf when there are no rows). Blocks start from their first row, not from
    infinities, which fastmath may assume away (that made this loop 30x slower)."""
    n, d = x.shape
    if n == 0:
        return np.full(d, np.inf, np.float32), np.full(d, -np.inf, np.float32)
    blocks = max(1, min(n // 64, 16))
    lo = np.empty((blocks, d), np.float32)
    hi = np.empty((blocks, d), np.float32)
    for b in prange(blocks):
        first, end = b * n // blocks, (b + 1) * n // blocks
        lo_b, hi_b = lo[b], hi[b]
        lo_b[:] = x[first]
        hi_b[:] = x[first]
        for i in range(first + 1, end):
            row = x[i]
            for j in range(d):  # branch-free, so that it vectorises
                lo_b[j] = min(lo_b[j], row[j])
                hi_b[j] = max(hi_b[j], row[j])
    out_lo = lo[0].copy()
    out_hi = hi[0].copy()
    for b in range(1, blocks):
        for j in range(d):
            out_lo[j] = min(out_lo[j], lo[b, j])
            out_hi[j] = max(out_hi[j], hi[b, j])
    return out_lo, out_hi


def sq8_params(lo: np.ndarray, hi: np.ndarray, metric: int, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(lo, step) float32 (d,) of codes covering the column ranges [lo, hi], widened by
    ``margin`` times each range on both sides (room for later rows). Under l2 every column
    gets the widest column's step (see above)."""
    lo = lo.astype(np.float64)
    width = hi.astype(np.float64) - lo
    lo = lo - margin * width
    width = width * (1 + 2 * margin)
    if metric == L2:
        width = np.full_like(width, width.max(initial=0.0))
    step = np.where(width > 0, width / 255.0, 1.0)
    return lo.astype(np.float32), step.astype(np.float32)


@njit(**KERNEL)
def prepare_query(q, lo, step, metric, out):
    """Write to ``out`` the form of query ``q`` that is compared with codes (see above)."""
    if metric == L2:
        for j in range(q.shape[0]):
            out[j] = (q[j] - lo[j]) / step[j]
    else:
        for j in range(q.shape[0]):
            out[j] = q[j] * step[j]
