"""shoal: an embedded vector database whose core is a numba HNSW index."""

from shoal.errors import (
    AuthenticationError,
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
    PayloadTooLargeError,
    ReadOnlyError,
    ShoalError,
    StorageError,
)
from shoal.client import Client, RemoteCollection
from shoal.db.collection import Collection, Hit
from shoal.db.database import Database
from shoal.db.policy import Policy
from shoal.db.database import open_database as open  # noqa: A001 - shoal.open(path)
from shoal.index import Index

__version__ = "0.1.0"


def __getattr__(name: str):
    """``shoal.ray`` imports Ray only when first used (``pip install 'shoal[ray]'``)."""
    if name == "ray":
        import importlib

        return importlib.import_module("shoal.ray")
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")

__all__ = [
    "AuthenticationError",
    "Client",
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
    "PayloadTooLargeError",
    "Policy",
    "ReadOnlyError",
    "RemoteCollection",
    "ShoalError",
    "StorageError",
    "__version__",
    "open",
]
