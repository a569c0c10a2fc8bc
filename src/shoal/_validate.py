"""Turn user input into the C-contiguous float32 / int64 arrays the kernels take, or raise.

Every check happens here, before any state changes, so bad input never corrupts an index.
"""

from __future__ import annotations

import numbers

import numpy as np

from shoal.errors import DimensionMismatchError, InvalidArgumentError, InvalidTypeError
from shoal.kernels.distance import checked_rows, first_nonfinite_row, row_norms

METRICS = {"cosine": 0, "ip": 0, "l2": 1}


def metric_code(metric: object) -> int:
    """Kernel code of a metric name: 0 = inner product (cosine is normalised ip), 1 = l2."""
    if not isinstance(metric, str) or metric not in METRICS:
        raise InvalidArgumentError(
            f"metric must be one of {sorted(METRICS)}, got {metric!r}"
        )
    return METRICS[metric]


def positive_int(value: object, name: str, minimum: int = 1) -> int:
    """An integer >= minimum (bools are refused)."""
    if type(value) is int and value >= minimum:  # the common case, without the ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {value}")
    return value


def vectors(data: object, dim: int, name: str = "vectors", normalize: bool = False) -> np.ndarray:
    """A (n, dim) C-contiguous float32 matrix of finite values; a 1-D input is one row.

    With ``normalize`` the rows are scaled to unit length (zero rows are refused).
    """
    if type(data) is np.ndarray and data.dtype == np.float32 and data.ndim in (1, 2) \
            and data.shape[-1] == dim:  # the common case, without conversions
        arr = data.reshape(1, dim) if data.ndim == 1 else data
    else:
        arr = _matrix(data, dim, name)
    out, bad, zero = checked_rows(arr, normalize)
    if bad >= 0:
        raise InvalidArgumentError(f"{name} row {bad} contains NaN or Inf; all values must be finite")
    if zero >= 0:
        zeros = np.flatnonzero(~arr.any(axis=1))
        raise InvalidArgumentError(
            f"{name} rows {zeros[:10].tolist()} have zero length; cosine needs non-zero vectors")
    return out


def vectors_and_norms(data: object, dim: int, name: str = "vectors",
                      need_norms: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Like ``vectors`` without normalising: (matrix, row norms or None). The matrix may be the
    caller's own array (no copy when it is already C-contiguous float32): do not write to it."""
    out = _matrix(data, dim, name)
    bad = first_nonfinite_row(out)
    if bad >= 0:
        raise InvalidArgumentError(f"{name} row {bad} contains NaN or Inf; all values must be finite")
    norms = None
    if need_norms:
        norms = row_norms(out)
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise InvalidArgumentError(
                f"{name} rows {zero[:10].tolist()} have zero length; cosine needs non-zero vectors"
            )
    return out, norms


def _matrix(data: object, dim: int, name: str) -> np.ndarray:
    """``data`` as a C-contiguous float32 (n, dim) matrix (values not checked yet)."""
    if isinstance(data, (str, bytes)) or data is None:
        raise InvalidTypeError(f"{name} must be a numeric array, got {type(data).__name__}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged lists and the like
        raise InvalidArgumentError(f"{name} must be a rectangular numeric array: {exc}") from None
    if arr.dtype.kind not in "fiu":
        raise InvalidTypeError(
            f"{name} must have a real numeric dtype (float or int), got {arr.dtype}"
        )
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    elif arr.ndim != 2:
        raise InvalidArgumentError(
            f"{name} must be 1-D (one vector) or 2-D (n, {dim}), got {arr.ndim}-D shape {arr.shape}"
        )
    if arr.shape[1] != dim:
        raise DimensionMismatchError(
            f"{name} must have dimension {dim}, got shape {arr.shape}"
        )
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused later
        return np.ascontiguousarray(arr, dtype=np.float32)


def ids(data: object, n: int, name: str = "ids") -> np.ndarray:
    """A 1-D int64 array of n user ids."""
    if isinstance(data, (str, bytes)):
        raise InvalidTypeError(f"{name} must be integers, got {type(data).__name__}")
    arr = np.asarray(data)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidTypeError(f"{name} must be integers (int64), got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise InvalidArgumentError(f"{name} must fit in int64")
    if arr.shape[0] != n:
        raise InvalidArgumentError(f"{name} has {arr.shape[0]} entries but there are {n} vectors")
    return np.ascontiguousarray(arr, dtype=np.int64)


def k_and_ef(k: object, ef: object, default_ef: int) -> tuple[int, int]:
    """``k`` >= 1 and a search beam ``ef`` >= k (``None``: ``max(k, default_ef)``)."""
    k = positive_int(k, "k")
    ef = max(k, default_ef) if ef is None else positive_int(ef, "ef")
    if ef < k:
        raise InvalidArgumentError(f"ef must be >= k ({k}), got {ef}")
    return k, ef


def num_threads(value: object, available: int) -> int:
    """A thread count in [1, available]; None means all."""
    if value is None:
        return available
    value = positive_int(value, "num_threads")
    if value > available:
        raise InvalidArgumentError(
            f"num_threads must be <= {available} (numba's NUMBA_NUM_THREADS), got {value}"
        )
    return value
