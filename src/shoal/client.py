"""``shoal.Client``: a shoal server's collections with the embedded database's API.

The same code runs against either::

    db = shoal.open("./my.db")                                  # embedded
    db = shoal.Client("http://127.0.0.1:6333", api_key="...")   # remote
    docs = db.get_collection("docs")
    docs.upsert(ids, vectors, payloads); docs.search(q, k=10, filter={...})

The client checks its input with the embedded code's own validators before sending it (so
bad input raises the same typed errors, without a round trip), and turns the server's error
bodies back into the same exception classes.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

from shoal import errors
from shoal.db import contract
from shoal.db.collection import Hit
from shoal.embed import Embedding
from shoal.index import DEFAULT_EF_CONSTRUCTION


def _error(response: Any) -> errors.ShoalError:
    """The exception a server error response stands for."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        cls = getattr(errors, str(body["error"].get("type")), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.ShoalError)):
            cls = errors.ShoalError
        return cls(body["error"].get("message", ""))
    if response.status_code == 422 and isinstance(body, dict):  # the request model's checks
        parts = [f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}"
                 for d in body.get("detail", []) if isinstance(d, dict)]
        return errors.InvalidArgumentError("; ".join(parts) or response.text)
    return errors.ShoalError(f"HTTP {response.status_code}: {response.text[:200]}")


class Client:
    """Connection to a shoal server (``shoal serve``). Offers ``list_collections``,
    ``create_collection``, ``get_collection`` and ``drop_collection`` as ``shoal.Database``
    does; close it (or use ``with``)."""

    def __init__(self, url: str = "http://127.0.0.1:6333", *, api_key: str | None = None,
                 timeout: float = 120.0, vector_encoding: str = "base64") -> None:
        """``vector_encoding``: how vectors travel inside the JSON bodies: ``"base64"`` (float32
        bytes, 3x less to send and parse) or ``"json"`` (lists of numbers)."""
        import httpx

        if vector_encoding not in ("base64", "json"):
            raise errors.InvalidArgumentError(
                f"vector_encoding must be 'base64' or 'json', got {vector_encoding!r}")
        self.vector_encoding = vector_encoding
        headers = {"api-key": api_key} if api_key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request (``body`` as JSON; numpy arrays allowed); the decoded response, or
        the shoal exception its error body names."""
        content = None if body is None else orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        response = self._http.request(method, path, content=content,
                                      headers={"content-type": "application/json"})
        if response.status_code >= 400:
            raise _error(response)
        return orjson.loads(response.content)

    def list_collections(self) -> list[str]:
        return self.request("GET", "/collections")["collections"]

    def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine", *, m: int = 16,
                          ef_construction: int = DEFAULT_EF_CONSTRUCTION, on_disk: bool = False,
                          embedding: Any = None) -> "RemoteCollection":
        """As ``shoal.Database.create_collection``; ``embedding`` runs here, in the client."""
        emb, dim = contract.prepare_embedding(embedding, dim)
        config = contract.prepare_create(name, dim, metric, m, ef_construction, on_disk, emb)
        info = self.request("PUT", f"/collections/{name}",
                            {k: config[k] for k in ("dim", "metric", "m", "ef_construction", "on_disk", "embedding")})
        return RemoteCollection(self, info, emb)

    def get_collection(self, name: str, *, embedding: Any = None) -> "RemoteCollection":
        contract.prepare_name(name)
        info = self.request("GET", f"/collections/{name}")
        return RemoteCollection(self, info, contract.collection_embedding(info, embedding))

    def drop_collection(self, name: str) -> None:
        contract.prepare_name(name)
        self.request("DELETE", f"/collections/{name}")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"


class RemoteCollection:
    """A collection on a shoal server, with ``shoal.Collection``'s methods."""

    def __init__(self, client: Client, info: dict[str, Any], embedding: Embedding | None = None) -> None:
        self._client = client
        self.name = info["name"]
        self.dim = int(info["dim"])
        self.metric = info["metric"]
        self.config = {k: info.get(k) for k in ("name", "dim", "metric", "m", "ef_construction", "on_disk",
                                                "embedding")}
        #: Turns documents and text queries into vectors, in this process (``shoal.embed``).
        self.embedding = embedding
        self._path = f"/collections/{self.name}"

    def _encoded(self, x: np.ndarray) -> dict[str, Any]:
        if self._client.vector_encoding == "json":
            return {"vectors": x}
        return {"vectors_base64": base64.b64encode(x.astype("<f4").tobytes()).decode("ascii")}

    def upsert(self, ids: Any, vectors: Any = None, payloads: Any = None, documents: Any = None) -> None:
        prepared = contract.prepare_upsert(ids, vectors, payloads, self.dim, self.metric, documents,
                                           self.embedding, self.name)
        if not prepared.keys:
            return
        body = {"ids": prepared.keys, **self._encoded(prepared.vectors),
                "payloads": [orjson.Fragment(t) for t in prepared.payloads]}
        if prepared.documents is not None:
            body["documents"] = prepared.documents
        self._client.request("PUT", f"{self._path}/points", body)

    def get(self, ids: Any, *, with_vector: bool = True) -> list[dict | None]:
        keys = contract.prepare_keys(ids)
        points = self._client.request("POST", f"{self._path}/points/get",
                                      {"ids": keys, "with_vector": bool(with_vector)})["points"]
        for p in points:
            if p is not None:
                if p.get("vector") is not None:
                    p["vector"] = np.array(p["vector"], np.float32)
                elif not with_vector:
                    p.pop("vector", None)
        return points

    def delete(self, ids: Any = None, *, filter: dict | None = None) -> int:
        keys, flt = contract.prepare_delete(ids, filter)
        body: dict[str, Any] = {"ids": keys} if keys is not None else {"filter": flt}
        return int(self._client.request("POST", f"{self._path}/points/delete", body)["deleted"])

    def count(self, filter: dict | None = None) -> int:
        flt = contract.prepare_filter(filter)
        return int(self._client.request("POST", f"{self._path}/points/count", {"filter": flt})["count"])

    def search(self, queries: Any = None, k: int = 10, *, text: Any = None, mode: str | None = None,
               filter: dict | None = None, ef: int | None = None, weights: Any = None,
               with_payload: bool = True, with_vector: bool = False, with_document: bool = False,
               num_threads: int | None = None) -> list[Hit] | list[list[Hit]]:
        """As ``shoal.Collection.search`` (texts are embedded here; ``num_threads`` is the
        server's to choose)."""
        s = contract.prepare_search(queries, k, ef, filter, self.dim, self.metric, text=text, mode=mode,
                                    weights=weights, embedding=self.embedding, collection=self.name)
        body: dict[str, Any] = {"k": s.k, "ef": s.ef, "filter": s.filter, "mode": s.mode,
                                "with_payload": bool(with_payload), "with_vector": bool(with_vector),
                                "with_document": bool(with_document)}
        if s.queries is not None:
            body.update({"vector": s.queries[0]} if s.one else self._encoded(s.queries))
        if s.mode != "vector":
            body["text"] = s.texts[0] if s.one else s.texts
        if s.mode == "hybrid":
            body["weights"] = list(s.weights)
        got = self._client.request("POST", f"{self._path}/search", body)
        rows = [got["hits"]] if s.one else got["results"]
        metric = contract.hit_metric(s.mode, self.metric)
        out = [[Hit(h["id"], h["distance"], metric, h.get("payload"),
                    None if h.get("vector") is None else np.array(h["vector"], np.float32), h.get("document"))
                for h in row] for row in rows]
        return out[0] if s.one else out

    def scan(self, batch_size: int = 1000):
        """Every point, as batches of (ids, vectors, payloads), page by page. Each point that
        exists for the whole scan comes exactly once; one written during it comes in its old
        or its new version."""
        def fetch(after: int, limit: int):
            page = self._client.request("POST", f"{self._path}/points/scan", {"after": after, "limit": limit})
            vectors = np.array(page["vectors"], np.float32).reshape(-1, self.dim)
            return page["ids"], vectors, page["payloads"], page["next"]

        return contract.scan_pages(fetch, batch_size)

    def compact(self) -> None:
        self._client.request("POST", f"{self._path}/compact")

    def checkpoint(self) -> None:
        self._client.request("POST", f"{self._path}/checkpoint")

    def create_payload_index(self, field: str) -> None:
        self._client.request("POST", f"{self._path}/payload-index", {"field": contract.prepare_field(field)})

    def stats(self) -> dict[str, Any]:
        return self._client.request("GET", self._path)

    def flush(self) -> None:
        """Writes are durable on the server when they return; nothing to do."""

    def close(self) -> None:
        """Nothing to release: the client holds the connection (``Client.close``)."""

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        return f"RemoteCollection({self.name!r}, dim={self.dim}, metric={self.metric!r})"
