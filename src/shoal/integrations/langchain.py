"""A LangChain ``VectorStore`` over a shoal collection (``pip install 'shoal[langchain]'``).

    import shoal
    from shoal.integrations.langchain import ShoalVectorStore

    db = shoal.open("./rag.db")
    store = ShoalVectorStore.from_texts(texts, embedding, metadatas=metas, database=db,
                                        collection_name="docs")
    store.similarity_search("question", k=4, filter={"source": "manual"})

Works over an embedded collection or a remote one (``shoal.Client(...).get_collection``).
Each point's payload is ``{"page_content": text, "metadata": {...}}``; ids are strings; a
``filter`` uses shoal's grammar on the metadata fields (``{"year": {"$gte": 2020}}``).
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Sequence

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

_OPERATORS = ("$and", "$or")


def metadata_filter(flt: dict | None) -> dict | None:
    """A filter on metadata fields rewritten for the payload (``metadata.`` before each field)."""
    if flt is None:
        return None
    if not isinstance(flt, dict):
        raise TypeError(f"filter must be a dict, got {type(flt).__name__}")
    out: dict[str, Any] = {}
    for key, value in flt.items():
        if key in _OPERATORS and isinstance(value, list):
            out[key] = [metadata_filter(v) for v in value]
        elif key == "$not":
            out[key] = metadata_filter(value)
        elif key.startswith("$"):
            out[key] = value  # the grammar reports an unknown operator
        else:
            out[f"metadata.{key}"] = value
    return out


class ShoalVectorStore(VectorStore):
    """LangChain's ``VectorStore`` interface over ``collection`` (a ``shoal.Collection`` or a
    ``shoal.RemoteCollection``), embedding texts with ``embedding``."""

    def __init__(self, collection: Any, embedding: Embeddings) -> None:
        self.collection = collection
        self._embedding = embedding

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    # ------------------------------------------------------------------ writes
    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"metadatas has {len(metadatas)} entries for {len(texts)} texts")
        if ids is None:
            ids = [str(uuid.uuid4()) for _ in texts]
        else:
            ids = [str(uuid.uuid4()) if i is None else str(i) for i in ids]
            if len(ids) != len(texts):
                raise ValueError(f"ids has {len(ids)} entries for {len(texts)} texts")
        if not texts:
            return []
        vectors = np.asarray(self._embedding.embed_documents(texts), np.float32)
        payloads = [{"page_content": t, "metadata": dict(m or {})}
                    for t, m in zip(texts, metadatas or [None] * len(texts))]
        self.collection.upsert(ids, vectors, payloads)
        return ids

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = kwargs.pop("ids", None)
        if ids is None and any(doc.id for doc in documents):
            ids = [doc.id for doc in documents]
        return self.add_texts([d.page_content for d in documents], [d.metadata for d in documents],
                              ids=ids, **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete these ids (absent ones are ignored), or every document when ``ids`` is None."""
        if ids is None:
            self.collection.delete(filter={"page_content": {"$exists": True}})
        elif ids:
            self.collection.delete(ids=[str(i) for i in ids])
        return True

    # ------------------------------------------------------------------ reads
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        found = self.collection.get([str(i) for i in ids], with_vector=False)
        return [self._document(p["id"], p["payload"]) for p in found if p is not None]

    @staticmethod
    def _document(key: Any, payload: dict | None) -> Document:
        payload = payload or {}
        return Document(page_content=payload.get("page_content", ""),
                        metadata=payload.get("metadata", {}), id=str(key))

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               filter: dict | None = None, **kwargs: Any
                                               ) -> list[tuple[Document, float]]:
        """Documents and their similarity (cosine similarity for a cosine collection)."""
        if self.collection.count() == 0:
            return []
        hits = self.collection.search(np.asarray(embedding, np.float32), k=k, ef=kwargs.get("ef"),
                                      filter=metadata_filter(filter))
        return [(self._document(h.id, h.payload), h.score) for h in hits]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(
            self._embedding.embed_query(query), k=k, filter=filter, **kwargs)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                    filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None,
                          **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def _select_relevance_score_fn(self):
        metric = self.collection.metric
        if metric == "l2":
            return lambda score: 1.0 / (1.0 - score)  # score is -squared distance
        return lambda score: (score + 1.0) / 2.0      # cosine similarity to [0, 1]

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None,
                   *, ids: list[str] | None = None, database: Any = None, path: str | None = None,
                   collection_name: str = "langchain", metric: str = "cosine",
                   **kwargs: Any) -> "ShoalVectorStore":
        """Embed ``texts`` into ``collection_name`` of ``database`` (a ``shoal.Database`` or
        ``shoal.Client``; or the database at ``path``), created if needed."""
        if database is None:
            if path is None:
                raise ValueError("from_texts needs database= (shoal.open(...) or shoal.Client(...)) or path=")
            import shoal

            database = shoal.open(path)
        if collection_name in database.list_collections():
            collection = database.get_collection(collection_name)
        else:
            dim = len(embedding.embed_query(texts[0] if texts else ""))
            collection = database.create_collection(collection_name, dim=dim, metric=metric)
        store = cls(collection, embedding)
        store.add_texts(texts, metadatas, ids=ids)
        return store
