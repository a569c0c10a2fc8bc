"""BLAS calls that leave the cores to numba.

OpenBLAS's worker threads spin for a while after each call. On a machine with as many cores
as numba threads, a numba kernel that runs next shares its cores with them and runs up to 2x
slower (measured: batch insertion right after a 512x512 product). shoal's own BLAS products
are small or already run beside numba work, so they run on the calling thread alone.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

_controller = None


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Limit BLAS to the calling thread for the duration of the block."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield
