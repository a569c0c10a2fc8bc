"""shoal's exceptions. Each knows the HTTP status a server should answer with.

Bad input raises a subclass of the builtin a Python user expects (``ValueError``,
``TypeError``, ``KeyError``), so ``except ValueError`` keeps working.
"""


class ShoalError(Exception):
    """Base class of every error shoal raises on purpose."""

    http_status = 500


class InvalidArgumentError(ShoalError, ValueError):
    """An argument has the right type but a value shoal cannot accept."""

    http_status = 400


class InvalidTypeError(ShoalError, TypeError):
    """An argument has a type shoal cannot accept."""

    http_status = 400


class DimensionMismatchError(InvalidArgumentError):
    """Vectors whose dimension differs from the index's."""


class DuplicateIdError(InvalidArgumentError):
    """Ids that are repeated in a batch or already stored."""


class IdNotFoundError(ShoalError, KeyError):
    """Ids that are not in the index."""

    http_status = 404

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class CorruptIndexError(ShoalError):
    """A saved index file that is truncated, damaged or not a shoal file."""


class FilterError(InvalidArgumentError):
    """A filter that does not follow the grammar in ``shoal.db.filters``."""


class LockedError(ShoalError):
    """Another process holds the database open for writing."""

    http_status = 423


class ReadOnlyError(ShoalError):
    """A write to a database or collection opened read-only."""

    http_status = 403


class CollectionNotFoundError(ShoalError, KeyError):
    """A collection name that does not exist."""

    http_status = 404

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CollectionExistsError(InvalidArgumentError):
    """A collection name that is already taken."""

    http_status = 409


class AuthenticationError(ShoalError):
    """A request to a shoal server without a valid API key (HTTP 401)."""

    http_status = 401


class PayloadTooLargeError(InvalidArgumentError):
    """A request body over the server's size limit (HTTP 413)."""

    http_status = 413


class StorageError(ShoalError):
    """An I/O error (EIO, ENOSPC, ...) while a collection was writing. The failed operation
    is all or nothing (reopening shows which); the collection refuses further writes until it
    is reopened, as PostgreSQL does after a failed fsync."""

    http_status = 503


class EmbeddingError(InvalidArgumentError):
    """An embedding function returned something other than one vector per text of the
    collection's dimension, or a collection has no embedding function for texts."""


class MissingExtraError(ShoalError, ImportError):
    """A feature needs an optional extra that is not installed (the message names it)."""
