"""shoal: an embedded vector database whose core is a numba HNSW index."""

from shoal.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    CorruptIndexError,
    DimensionMismatchError,
    DuplicateIdError,
    FilterError,
    IdNotFoundError,
    InvalidArgumentError,
    InvalidTypeError,
    LockedError,
    ReadOnlyError,
    ShoalError,
)
from shoal.db.collection import Collection, Hit
from shoal.db.database import Database
from shoal.db.database import open_database as open  # noqa: A001 - shoal.open(path)
from shoal.index import Index

__version__ = "0.1.0"

__all__ = [
    "Collection",
    "CollectionExistsError",
    "CollectionNotFoundError",
    "CorruptIndexError",
    "Database",
    "DimensionMismatchError",
    "DuplicateIdError",
    "FilterError",
    "Hit",
    "IdNotFoundError",
    "Index",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LockedError",
    "ReadOnlyError",
    "ShoalError",
    "__version__",
    "open",
]
