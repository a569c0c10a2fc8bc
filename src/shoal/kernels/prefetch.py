"""Software prefetch of array rows through LLVM's ``llvm.prefetch`` intrinsic.

A search knows which rows it will read next (a node's unvisited neighbours); asking for all of
them before computing any distance lets their cache misses overlap instead of queueing.
"""

from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from shoal.kernels import KERNEL

LINE = 64


@intrinsic
def _prefetch_bytes(typingctx, arr, row, offset):
    """Prefetch (read, high locality) the cache line ``offset`` bytes into row ``row`` of ``arr``."""
    if not isinstance(arr, types.Array) or arr.ndim != 2:
        return None
    sig = types.void(arr, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], zero],
                                       wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        addr = builder.gep(builder.bitcast(ptr, i8p), [args[2]])
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [addr, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(**KERNEL)
def prefetch_row(arr, row):
    """Prefetch every cache line of ``arr[row]`` (a C-contiguous 2-D array)."""
    nbytes = arr.shape[1] * arr.itemsize
    for off in range(0, nbytes, LINE):
        _prefetch_bytes(arr, row, off)


if config.DISABLE_JIT:  # pure Python (NUMBA_DISABLE_JIT=1, for debugging): a hint we can drop
    def prefetch_row(arr, row):  # noqa: F811
        """No-op: there are no cache hints in pure Python."""
