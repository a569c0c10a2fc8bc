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

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from shoal import _validate
from shoal.db.filters import compile_filter, json_path
from shoal.db.payloads import Key, check_keys, encode_payloads
from shoal.embed import DEFAULT as DEFAULT_EMBEDDING
from shoal.embed import Embedding, probe_dim
from shoal.embed import resolve as resolve_embedding
from shoal.errors import DimensionMismatchError, EmbeddingError, InvalidArgumentError, InvalidTypeError


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
    max_document_length: int = 1_000_000   # characters of one document


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

    def upsert(self, ids: Any, vectors: Any = None, payloads: Any = None, documents: Any = None) -> None: ...
    def get(self, ids: Any, *, with_vector: bool = True) -> list[dict | None]: ...
    def delete(self, ids: Any = None, *, filter: dict | None = None) -> int: ...
    def count(self, filter: dict | None = None) -> int: ...
    def search(self, queries: Any = None, k: int = 10, *, text: Any = None, mode: str | None = None,
               filter: dict | None = None, ef: int | None = None, weights: Any = None,
               with_payload: bool = True, with_vector: bool = False, with_document: bool = False,
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


def prepare_embedding(embedding: Any, dim: Any) -> tuple[Embedding | None, Any]:
    """A new collection's embedding function (``shoal.embed.resolve``) and its dimension:
    ``dim`` as given (checked against the function's when known), or the function's."""
    emb = resolve_embedding(embedding)
    if emb is None:
        if dim is None:
            raise InvalidArgumentError("dim is required (or an embedding function to take it from)")
        return None, dim
    made = probe_dim(emb)  # (a function of the caller's embeds one short text to tell)
    if dim is not None and _validate.positive_int(dim, "dim") != made:
        raise DimensionMismatchError(f"dim is {dim} but the embedding function makes {made}-d vectors")
    return emb, made


def collection_embedding(config: dict, embedding: Any) -> Embedding | None:
    """The embedding function of an existing collection: ``embedding`` as given (of the
    collection's dimension), else the default model if the collection was made with it."""
    if embedding is None:
        if config.get("embedding") == DEFAULT_EMBEDDING:
            return resolve_embedding(DEFAULT_EMBEDDING, check_extra=False)
        return None
    emb = resolve_embedding(embedding)
    probe_dim(emb)  # (a function of the caller's embeds one short text to tell)
    emb.check_dim(int(config["dim"]), config["name"])
    return emb


def prepare_create(name: object, dim: object, metric: object, m: object, ef_construction: object,
                   on_disk: object = False, embedding: Embedding | None = None) -> dict:
    """The configuration of a new collection, checked (``embedding``: its function, from
    ``prepare_embedding``; the configuration records its kind)."""
    if not isinstance(on_disk, (bool, np.bool_)):
        raise InvalidTypeError(f"on_disk must be True or False, got {on_disk!r}")
    config = {"name": prepare_name(name),
              "dim": _validate.positive_int(dim, "dim"),
              "metric": metric,
              "m": _validate.positive_int(m, "m", minimum=2),
              "ef_construction": _validate.positive_int(ef_construction, "ef_construction"),
              "on_disk": bool(on_disk),
              "embedding": None if embedding is None else embedding.name}
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
    documents: list[str | None] | None = None

    def unit(self) -> np.ndarray:
        """The vectors as stored: normalised for cosine."""
        return self.vectors if self.norms is None else self.vectors / self.norms[:, None]


def prepare_documents(documents: Any, n: int) -> list[str | None] | None:
    """Documents of ``n`` points (strings, or None where a point has none), or None."""
    if documents is None:
        return None
    if isinstance(documents, (str, bytes, dict)) or not isinstance(documents, (Sequence, np.ndarray)):
        raise InvalidTypeError(f"documents must be a list of strings, got {type(documents).__name__}")
    docs = list(documents)
    if len(docs) != n:
        raise InvalidArgumentError(f"documents has {len(docs)} entries but there are {n} ids")
    for i, doc in enumerate(docs):
        if doc is not None and not isinstance(doc, str):
            raise InvalidTypeError(f"documents[{i}] must be a string or None, got {type(doc).__name__}")
        if doc is not None and len(doc) > LIMITS.max_document_length:
            raise InvalidArgumentError(f"documents[{i}] is longer than {LIMITS.max_document_length} characters")
    return docs


def _embedded(embedding: Embedding | None, texts: list, what: str, collection: str,
              queries: bool = False) -> np.ndarray:
    """``texts`` embedded by the collection's function (its errors name what is missing)."""
    if embedding is None:
        raise EmbeddingError(f"collection {collection!r} has no embedding function to turn {what} into "
                             "vectors: pass vectors, or give the collection embedding= (create_collection "
                             "or get_collection)")
    return embedding.embed_queries(texts) if queries else embedding.embed(texts)


def prepare_upsert(ids: Any, vectors: Any, payloads: Any, dim: int, metric: str, documents: Any = None,
                   embedding: Embedding | None = None, collection: str = "") -> Upsert:
    keys = prepare_keys(ids)
    docs = prepare_documents(documents, len(keys))
    if vectors is None:
        if docs is None:
            raise InvalidArgumentError("upsert takes vectors, or documents to embed")
        missing = [i for i, d in enumerate(docs) if d is None]
        if missing:
            raise InvalidArgumentError(f"documents[{missing[0]}] is None: without vectors every point "
                                       "needs a document to embed")
        vectors = _embedded(embedding, docs, "documents", collection)
    x, norms = _validate.vectors_and_norms(vectors, dim, "vectors", need_norms=metric == "cosine")
    if x.shape[0] != len(keys):
        raise InvalidArgumentError(f"ids has {len(keys)} entries but vectors has {x.shape[0]} rows")
    return Upsert(keys, x, norms, encode_payloads(payloads, len(keys)), docs)


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
    queries: np.ndarray | None   # float32 (nq, dim), normalised for cosine (None: keyword only)
    one: bool             # a single query (the answer is one list, not a list of lists)
    k: int
    ef: int | None        # as given (None: the collection's default)
    filter: dict | None
    mode: str = "vector"  # "vector", "keyword" or "hybrid"
    texts: list[str] | None = None
    weights: tuple[float, float] = (1.0, 1.0)   # hybrid: (vector, keyword) weights in the fusion


MODES = ("vector", "keyword", "hybrid")
#: Reciprocal rank fusion (Cormack et al., 2009): a point's hybrid score is the sum over the
#: two result lists of ``weight / (RRF_K + rank)`` (rank 1 first).
RRF_K = 60
#: Each half of a hybrid search brings this many times ``k`` candidates (at least HYBRID_MIN).
HYBRID_FACTOR = 4
HYBRID_MIN = 40


def prepare_search(queries: Any, k: Any, ef: Any, flt: Any, dim: int, metric: str, *, text: Any = None,
                   mode: Any = None, weights: Any = None, embedding: Embedding | None = None,
                   collection: str = "") -> Search:
    """A search, checked: ``queries`` (vectors) and/or ``text`` (a string, or a list for a
    batch) in a ``mode`` ("vector" by default: the queries, or the text embedded; "keyword":
    BM25 over the documents; "hybrid": both, fused by reciprocal rank)."""
    k_checked, _ = _validate.k_and_ef(k, ef, 1)
    if k_checked > LIMITS.max_k:
        raise InvalidArgumentError(f"k must be <= {LIMITS.max_k}, got {k_checked}")
    if ef is not None and int(ef) > LIMITS.max_ef:
        raise InvalidArgumentError(f"ef must be <= {LIMITS.max_ef}, got {ef}")
    mode = "vector" if mode is None else mode
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    texts, one = _texts(text)
    if mode != "vector" and texts is None:
        raise InvalidArgumentError(f"mode={mode!r} searches documents: pass text=")
    if mode == "keyword" and queries is not None:
        raise InvalidArgumentError("mode='keyword' takes text only, not query vectors")
    if mode == "vector" and texts is not None and queries is not None:
        raise InvalidArgumentError("pass query vectors or text, not both (or mode='hybrid')")
    if mode != "hybrid" and weights is not None:
        raise InvalidArgumentError("weights apply to mode='hybrid' only")
    q = None
    if queries is not None:
        q = _validate.vectors(queries, dim, "queries", normalize=metric == "cosine")
        one = np.ndim(queries) == 1
        if texts is not None and len(texts) != q.shape[0]:
            raise InvalidArgumentError(f"text has {len(texts)} entries but queries has {q.shape[0]} rows")
    elif mode != "keyword":
        if texts is None:
            raise InvalidArgumentError("search takes query vectors or text=")
        q = _validate.vectors(_embedded(embedding, texts, "text", collection, queries=True), dim, "queries",
                              normalize=metric == "cosine")
    return Search(q, one, k_checked, None if ef is None else int(ef), prepare_filter(flt), mode, texts,
                  _weights(weights))


def _texts(text: Any) -> tuple[list[str] | None, bool]:
    if text is None:
        return None, False
    if isinstance(text, str):
        return [text], True
    if isinstance(text, (bytes, dict)) or not isinstance(text, (Sequence, np.ndarray)):
        raise InvalidTypeError(f"text must be a string or a list of strings, got {type(text).__name__}")
    texts = list(text)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidTypeError(f"text[{i}] must be a string, got {type(t).__name__}")
    if not texts:
        raise InvalidArgumentError("text is an empty list")
    return texts, False


def _weights(weights: Any) -> tuple[float, float]:
    if weights is None:
        return (1.0, 1.0)
    try:
        w = tuple(float(v) for v in weights)
    except (TypeError, ValueError):
        raise InvalidTypeError(f"weights must be two numbers (vector, keyword), got {weights!r}") from None
    if len(w) != 2 or not all(math.isfinite(v) and v >= 0 for v in w) or w == (0.0, 0.0):
        raise InvalidArgumentError(f"weights must be two finite numbers >= 0, not both 0, got {weights!r}")
    return w


def hybrid_candidates(k: int) -> int:
    """How many candidates each half of a hybrid search brings for ``k`` results."""
    return min(max(HYBRID_FACTOR * k, HYBRID_MIN), LIMITS.max_k)


def hit_metric(mode: str, metric: str) -> str:
    """What a hit's ``distance`` is in this mode: the collection's metric, "bm25" (minus the
    BM25 score) or "rrf" (minus the fused score)."""
    return metric if mode == "vector" else "bm25" if mode == "keyword" else "rrf"


def fuse(vector_rows: list[list[tuple]], keyword_rows: list[list[tuple]], k: int,
         weights: tuple[float, float]) -> list[list[tuple]]:
    """Reciprocal rank fusion of two result lists per query (rows ``(id, distance, ...)``, best
    first; ids of users or row ids): the ``k`` best by fused score, as the same rows with minus
    that score as distance (ties: the vector half's order, then the keyword half's)."""
    out = []
    for vec, kw in zip(vector_rows, keyword_rows):
        score: dict[tuple[type, Key], float] = {}
        row_of: dict[tuple[type, Key], tuple] = {}
        for weight, rows in zip(weights, (vec, kw)):
            for rank, row in enumerate(rows, 1):
                key = (type(row[0]), row[0])
                score[key] = score.get(key, 0.0) + weight / (RRF_K + rank)
                row_of.setdefault(key, row)
        best = sorted(score, key=lambda key: -score[key])[:k]  # (stable: first seen first)
        out.append([(row_of[key][0], -score[key], *row_of[key][2:]) for key in best])
    return out


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
