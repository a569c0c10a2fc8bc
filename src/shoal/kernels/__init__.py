"""numba kernels: free functions over NumPy arrays and scalars; no classes, no I/O.

Metrics are passed as an int code (0 = inner product, 1 = squared l2) so that every kernel
is cacheable across processes.
"""

KERNEL = dict(cache=True, nogil=True, fastmath=True)
KERNEL_PARALLEL = dict(cache=True, nogil=True, fastmath=True, parallel=True)
