"""int8 codes for graph construction.

Building the graph moves one row per distance evaluation, mostly from RAM: a 384-d float32 row
is 24 cache lines, its int8 code 6. Construction only compares distances that share an endpoint
(a node against its candidates), so codes that preserve those orderings closely build a graph
as good as float32 rows do. Search always uses the float32 rows.

- inner product: ``code = round(x * 127 / max|x|)``: one positive scale keeps every product's
  sign and order (no centering: it would add a term that depends on the second row);
- l2: the same after subtracting the mean row (distances are translation-invariant).
"""

import numpy as np
from numba import njit, prange

from shoal.kernels import KERNEL_PARALLEL
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
