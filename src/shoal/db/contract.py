"""The collection contract: what every way of reaching a collection answers, and the one
prepare step they share.

A user reaches a collection embedded (``shoal.Collection``), over HTTP
(``shoal.client.RemoteCollection``) or sharded on Ray (``shoal.ray.ShardedCollection``). Each
method of ``CollectionAPI`` exists on all three with the same signature, and each begins with
the same ``prepare_*`` call below (validate the user's input, raise the same typed errors,
return it in one canonical form), then delegates: to the segments and the payload store, to
the server, or to the shards. The server's request models take their bounds from ``LIMITS``.
``tests/contract`` runs one suite over all three.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from shoal import _validate
from shoal.db.filters import compile_filter, json_path
from shoal.db.payloads import Key, check_keys, encode_payloads
from shoal.errors import InvalidArgumentError, InvalidTypeError


@dataclass(frozen=True)
class Limits:
    """Bounds every collection enforces (the server's schema states the same ones)."""

    max_dim: int = 65_536
    max_m: int = 256
    max_ef_construction: int = 4_096
    max_k: int = 10_000
    max_ef: int = 100_000
    max_key_length: int = 1_024      # characters of a string id
    max_field_length: int = 256      # characters of a payload index's field path
    max_name_length: int = 64


LIMITS = Limits()
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: The methods of the contract (``tests/contract`` checks each implementation has them all,
#: with the same parameters).
METHODS = ("upsert", "get", "delete", "count", "search", "scan", "compact", "checkpoint", "flush",
           "create_payload_index", "stats", "close")


@runtime_checkable
class CollectionAPI(Protocol):
    name: str
    dim: int
    metric: str

    def upsert(self, ids: Any, vectors: Any, payloads: Any = None) -> None: ...
    def get(self, ids: Any, *, with_vector: bool = True) -> list[dict | None]: ...
    def delete(self, ids: Any = None, *, filter: dict | None = None) -> int: ...
    def count(self, filter: dict | None = None) -> int: ...
    def search(self, queries: Any, k: int = 10, *, filter: dict | None = None, ef: int | None = None,
               with_payload: bool = True, with_vector: bool = False,
               num_threads: int | None = None) -> list: ...
    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[Key], np.ndarray, list[dict]]]: ...
    def compact(self) -> None: ...
    def checkpoint(self) -> None: ...
    def flush(self) -> None: ...
    def create_payload_index(self, field: str) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
    def __len__(self) -> int: ...


# ---------------------------------------------------------------------- prepare steps
def prepare_name(name: object) -> str:
    """A collection name: 1-64 of letters, digits, '_', '.', '-', starting with a letter or digit."""
    if not isinstance(name, str):
        raise InvalidTypeError(f"collection name must be a string, got {type(name).__name__}")
    if not NAME.fullmatch(name) or ".." in name:
        raise InvalidArgumentError(
            f"collection name {name!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit")
    return name


def prepare_create(name: object, dim: object, metric: object, m: object, ef_construction: object,
                   on_disk: object = False) -> dict:
    """The configuration of a new collection, checked."""
    if not isinstance(on_disk, (bool, np.bool_)):
        raise InvalidTypeError(f"on_disk must be True or False, got {on_disk!r}")
    config = {"name": prepare_name(name),
              "dim": _validate.positive_int(dim, "dim"),
              "metric": metric,
              "m": _validate.positive_int(m, "m", minimum=2),
              "ef_construction": _validate.positive_int(ef_construction, "ef_construction"),
              "on_disk": bool(on_disk)}
    _validate.metric_code(metric)
    for field, most in (("dim", LIMITS.max_dim), ("m", LIMITS.max_m),
                        ("ef_construction", LIMITS.max_ef_construction)):
        if config[field] > most:
            raise InvalidArgumentError(f"{field} must be <= {most}, got {config[field]}")
    return config


def prepare_keys(ids: Any) -> list[Key]:
    keys = check_keys(ids)
    for i, key in enumerate(keys):
        if type(key) is str and len(key) > LIMITS.max_key_length:
            raise InvalidArgumentError(f"ids[{i}] is longer than {LIMITS.max_key_length} characters")
    return keys


@dataclass(frozen=True)
class Upsert:
    keys: list[Key]
    vectors: np.ndarray          # float32 (n, dim), as given (not normalised)
    norms: np.ndarray | None     # float32 (n,), for cosine (rows of norm 0 are refused)
    payloads: list[str]          # JSON texts

    def unit(self) -> np.ndarray:
        """The vectors as stored: normalised for cosine."""
        return self.vectors if self.norms is None else self.vectors / self.norms[:, None]


def prepare_upsert(ids: Any, vectors: Any, payloads: Any, dim: int, metric: str) -> Upsert:
    keys = prepare_keys(ids)
    x, norms = _validate.vectors_and_norms(vectors, dim, "vectors", need_norms=metric == "cosine")
    if x.shape[0] != len(keys):
        raise InvalidArgumentError(f"ids has {len(keys)} entries but vectors has {x.shape[0]} rows")
    return Upsert(keys, x, norms, encode_payloads(payloads, len(keys)))


def prepare_filter(flt: Any) -> dict | None:
    """A filter, checked against the grammar (``FilterError`` naming the place)."""
    if flt is not None:
        compile_filter(flt)
    return flt


def prepare_delete(ids: Any, flt: Any) -> tuple[list[Key] | None, dict | None]:
    if (ids is None) == (flt is None):
        raise InvalidArgumentError("delete takes ids or filter (exactly one)")
    return (None if ids is None else prepare_keys(ids)), prepare_filter(flt)


@dataclass(frozen=True)
class Search:
    queries: np.ndarray   # float32 (nq, dim), normalised for cosine
    one: bool             # a single 1-D query (the answer is one list, not a list of lists)
    k: int
    ef: int | None        # as given (None: the collection's default)
    filter: dict | None


def prepare_search(queries: Any, k: Any, ef: Any, flt: Any, dim: int, metric: str) -> Search:
    k_checked, _ = _validate.k_and_ef(k, ef, 1)
    if k_checked > LIMITS.max_k:
        raise InvalidArgumentError(f"k must be <= {LIMITS.max_k}, got {k_checked}")
    if ef is not None and int(ef) > LIMITS.max_ef:
        raise InvalidArgumentError(f"ef must be <= {LIMITS.max_ef}, got {ef}")
    q = _validate.vectors(queries, dim, "queries", normalize=metric == "cosine")
    return Search(q, np.ndim(queries) == 1, k_checked, None if ef is None else int(ef), prepare_filter(flt))


def prepare_field(field: Any) -> str:
    if not isinstance(field, str):
        raise InvalidTypeError(f"field must be a string, got {type(field).__name__}")
    if len(field) > LIMITS.max_field_length:
        raise InvalidArgumentError(f"field must be at most {LIMITS.max_field_length} characters")
    json_path(field, "field")
    return field


def prepare_batch_size(batch_size: Any) -> int:
    return _validate.positive_int(batch_size, "batch_size")


def scan_pages(fetch, batch_size: Any) -> Iterator[tuple[list[Key], np.ndarray, list[dict]]]:
    """A scan over pages by row id (``Collection.scan_page``, behind HTTP or a Ray actor):
    ``fetch(after, limit)`` returns (ids, float32 vectors, payload dicts, next cursor or None).
    A point replaced during the scan comes back with a new, larger row id: the ids already
    returned are skipped, so each point comes once, in its old or its new version."""
    limit = prepare_batch_size(batch_size)
    after: int | None = -1
    seen: set[tuple[type, Key]] = set()
    while after is not None:
        keys, vectors, payloads, after = fetch(after, limit)
        keep = [i for i, key in enumerate(keys) if (type(key), key) not in seen]
        seen.update((type(key), key) for key in keys)
        if keep:
            yield [keys[i] for i in keep], vectors[keep], [payloads[i] for i in keep]
