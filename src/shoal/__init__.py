"""shoal: an embedded vector database whose core is a numba HNSW index."""

from shoal.errors import (
    CorruptIndexError,
    DimensionMismatchError,
    DuplicateIdError,
    IdNotFoundError,
    InvalidArgumentError,
    InvalidTypeError,
    ShoalError,
)
from shoal.db.filters import FilterError
from shoal.index import Index

__version__ = "0.1.0"

__all__ = [
    "CorruptIndexError",
    "DimensionMismatchError",
    "DuplicateIdError",
    "FilterError",
    "IdNotFoundError",
    "Index",
    "InvalidArgumentError",
    "InvalidTypeError",
    "ShoalError",
    "__version__",
]
