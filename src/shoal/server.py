"""shoal's HTTP server: the collection API over REST (FastAPI + uvicorn).

``shoal serve DB`` (or ``serve(path)``) opens a database and serves it; ``create_app(db)`` gives
the ASGI app for other servers. Endpoints (the OpenAPI schema is served at ``/openapi.json``,
and browsable at ``/docs``)::

    GET    /healthz                               liveness
    GET    /collections                           {"collections": [names]}
    PUT    /collections/{name}                    create {dim, metric, m, ef_construction}
    GET    /collections/{name}                    config and statistics
    DELETE /collections/{name}                    drop
    PUT    /collections/{name}/points             upsert {ids, vectors, payloads}
    POST   /collections/{name}/points/get         {ids, with_vector}
    POST   /collections/{name}/points/delete      {ids} or {filter}
    POST   /collections/{name}/points/count       {filter}
    POST   /collections/{name}/search             {vector} or {vectors}, k, ef, filter, ...
    POST   /collections/{name}/compact
    POST   /collections/{name}/payload-index      {field}

Every request validates against its model (422 naming the field otherwise); shoal's own
errors become their HTTP status with ``{"error": {"type", "message"}}``. With an API key set,
requests must carry it as the ``api-key`` header or ``Authorization: Bearer``: without one
they get 401, and the read-only key gets 403 on writes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shoal import errors
from shoal.db import contract
from shoal.db.contract import LIMITS, NAME
from shoal.db.database import Database, check_name, open_database
from shoal.embed import recorded as recorded_embedding
from shoal.index import DEFAULT_EF_CONSTRUCTION

#: Request bodies larger than this get 413 (1,000 queries of 1,536 floats fit).
MAX_BODY_BYTES = 64 * 1024 * 1024
_INT64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Key = Union[_INT64, Annotated[str, Field(min_length=1, max_length=LIMITS.max_key_length)]]
Name = Annotated[str, Path(pattern=f"^{NAME.pattern}$", description="collection name: letters, digits, _ . -")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateCollection(_Model):
    dim: int = Field(ge=1, le=LIMITS.max_dim)
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    m: int = Field(16, ge=2, le=LIMITS.max_m)
    ef_construction: int = Field(DEFAULT_EF_CONSTRUCTION, ge=1, le=LIMITS.max_ef_construction)
    on_disk: bool = False
    embedding: Optional[Literal["default", "custom"]] = Field(
        None, description="what turns the collection's texts into vectors, recorded for clients: "
                          "'default' (all-MiniLM-L6-v2, which this server also runs for a search "
                          "or upsert that sends text without vectors) or 'custom' (the client's own)")


class CollectionInfo(BaseModel):
    name: str
    dim: int
    metric: str
    m: int
    ef_construction: int
    on_disk: bool
    embedding: Optional[str] = None
    count: int
    rows: int
    deleted_rows: int
    segments: list[dict[str, Any]]
    log_records: int
    checkpoints: list[dict[str, Any]]


class CollectionList(BaseModel):
    collections: list[str]


_B64_DOC = ("the vectors as base64 of row-major little-endian float32 (n x dim), instead of "
            "vectors: about 3x less to send and to parse than lists of numbers")


class UpsertPoints(_Model):
    ids: list[Key] = Field(max_length=100_000)
    vectors: Optional[list[list[float]]] = None
    vectors_base64: Optional[str] = Field(None, description=_B64_DOC)
    payloads: Optional[list[Optional[dict[str, Any]]]] = None
    documents: Optional[list[Optional[str]]] = Field(
        None, description="a text per point (null: none), kept with it and indexed for keyword "
                          "search; embedded when no vectors are sent")


class GetPoints(_Model):
    ids: list[Key] = Field(max_length=100_000)
    with_vector: bool = True


class Point(BaseModel):
    id: Key
    payload: dict[str, Any]
    document: Optional[str] = None
    vector: Optional[list[float]] = None


class Points(BaseModel):
    points: list[Optional[Point]]


class DeletePoints(_Model):
    ids: Optional[list[Key]] = None
    filter: Optional[dict[str, Any]] = None


class CountPoints(_Model):
    filter: Optional[dict[str, Any]] = None


class Count(BaseModel):
    count: int


class Deleted(BaseModel):
    deleted: int


class Upserted(BaseModel):
    upserted: int


class Search(_Model):
    vector: Optional[list[float]] = None
    vectors: Optional[list[list[float]]] = Field(None, max_length=10_000)
    vectors_base64: Optional[str] = Field(None, description=_B64_DOC)
    text: Optional[Union[str, list[str]]] = Field(
        None, description="the query as text (a list: a batch): embedded for mode 'vector', "
                          "matched against the documents for 'keyword' and 'hybrid'")
    mode: Optional[Literal["vector", "keyword", "hybrid"]] = None
    weights: Optional[list[float]] = Field(None, min_length=2, max_length=2,
                                           description="hybrid: (vector, keyword) weights of the fusion")
    k: int = Field(10, ge=1, le=LIMITS.max_k)
    ef: Optional[int] = Field(None, ge=1, le=LIMITS.max_ef)
    filter: Optional[dict[str, Any]] = None
    with_payload: bool = True
    with_vector: bool = False
    with_document: bool = False


class ScanRequest(_Model):
    after: int = Field(-1, ge=-1, description="the cursor: the previous page's next (-1: from the start)")
    limit: int = Field(1000, ge=1, le=10_000)


class ScanPage(BaseModel):
    ids: list[Key]
    vectors: list[list[float]]
    payloads: list[dict[str, Any]]
    next: Optional[int] = Field(description="the cursor of the next page; null at the end")


class HitModel(BaseModel):
    id: Key
    score: float
    distance: float
    payload: Optional[dict[str, Any]] = None
    vector: Optional[list[float]] = None
    document: Optional[str] = None


class SearchResult(BaseModel):
    hits: Optional[list[HitModel]] = None
    results: Optional[list[list[HitModel]]] = None


class PayloadIndex(_Model):
    field: str = Field(min_length=1, max_length=LIMITS.max_field_length)


class Done(BaseModel):
    ok: bool = True


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


_ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 423, 503)}


def _error_response(exc: errors.ShoalError) -> JSONResponse:
    message = exc.args[0] if exc.args else str(exc)
    return JSONResponse({"error": {"type": type(exc).__name__, "message": str(message)}},
                        status_code=exc.http_status)


def _json(obj: Any) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _fast_body(model: type[BaseModel]) -> tuple[Any, dict[str, Any]]:
    """A dependency that validates the JSON body as ``model`` straight from its bytes
    (pydantic's parser: 3-4x faster than decoding to Python objects first, which matters for
    batches of vectors), and the OpenAPI ``requestBody`` that documents it."""

    async def parse(request: Request) -> BaseModel:
        raw = await request.body()
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            details = exc.errors(include_url=False, include_context=False)
            for d in details:
                d["loc"] = ("body", *d["loc"])
                d.pop("input", None)
            raise RequestValidationError(details) from None

    schema = model.model_json_schema()
    return parse, {"requestBody": {"required": True,
                                   "content": {"application/json": {"schema": schema}}}}


_UPSERT_BODY, _UPSERT_DOC = _fast_body(UpsertPoints)
_SEARCH_BODY, _SEARCH_DOC = _fast_body(Search)


class _BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.limit
        messages, size = [], 0
        while not too_big:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            too_big = size > self.limit
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        if too_big:
            exc = errors.PayloadTooLargeError(f"request body over the limit of {self.limit} bytes")
            await _error_response(exc)(scope, receive, send)
            return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class _Keys:
    def __init__(self, api_key: str | None, read_only_api_key: str | None) -> None:
        self.rw = api_key or None
        self.ro = read_only_api_key or None

    def check(self, request: Request, write: bool) -> None:
        if self.rw is None and self.ro is None:
            return
        given = request.headers.get("api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given:
            if self.rw is not None and hmac.compare_digest(given.encode(), self.rw.encode()):
                return
            if self.ro is not None and hmac.compare_digest(given.encode(), self.ro.encode()):
                if write:
                    raise errors.ReadOnlyError("the read-only API key cannot write")
                return
        raise errors.AuthenticationError("missing or invalid API key (send the api-key header "
                                         "or Authorization: Bearer)")


def create_app(db: Database, *, api_key: str | None = None, read_only_api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app serving ``db`` (which the caller opens and closes)."""
    keys = _Keys(api_key, read_only_api_key)
    app = FastAPI(title="shoal", version=_version(), responses=_ERRORS,
                  description="An embedded vector database's collections over HTTP.")
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    app.state.db = db

    def read(request: Request) -> None:
        keys.check(request, write=False)

    def write(request: Request) -> None:
        keys.check(request, write=True)

    reader = [Depends(read)]
    writer = [Depends(write)]

    @app.exception_handler(errors.ShoalError)
    async def shoal_error(request: Request, exc: errors.ShoalError) -> JSONResponse:
        return _error_response(exc)

    @app.get("/healthz", response_model=Done)
    def healthz() -> Any:
        return {"ok": True}

    @app.get("/collections", response_model=CollectionList, dependencies=reader)
    def list_collections() -> Any:
        return {"collections": db.list_collections()}

    @app.put("/collections/{name}", response_model=CollectionInfo, dependencies=writer)
    def create_collection(name: Name, body: CreateCollection) -> Any:
        col = db.create_collection(check_name(name), body.dim, body.metric, m=body.m,
                                   ef_construction=body.ef_construction, on_disk=body.on_disk,
                                   embedding=recorded_embedding(body.embedding, body.dim))
        return _info(col)

    @app.get("/collections/{name}", response_model=CollectionInfo, dependencies=reader)
    def collection_info(name: Name) -> Any:
        return _info(db.get_collection(name))

    @app.delete("/collections/{name}", response_model=Done, dependencies=writer)
    def drop_collection(name: Name) -> Any:
        db.drop_collection(name)
        return {"ok": True}

    @app.put("/collections/{name}/points", response_model=Upserted, dependencies=writer,
             openapi_extra=_UPSERT_DOC)
    def upsert(name: Name, body: UpsertPoints = Depends(_UPSERT_BODY)) -> Any:
        col = db.get_collection(name)
        vectors = None if body.vectors is None and body.vectors_base64 is None else _vectors(body, col.dim)
        col.upsert(body.ids, vectors, body.payloads, body.documents)
        return {"upserted": len(body.ids)}

    @app.post("/collections/{name}/points/get", response_model=Points, dependencies=reader)
    def get_points(name: Name, body: GetPoints) -> Any:
        found = db.get_collection(name).get(body.ids, with_vector=body.with_vector)
        for rec in found:
            if rec is not None and rec.get("vector") is not None:
                rec["vector"] = rec["vector"].tolist()
        return _json({"points": found})

    @app.post("/collections/{name}/points/delete", response_model=Deleted, dependencies=writer)
    def delete_points(name: Name, body: DeletePoints) -> Any:
        return {"deleted": db.get_collection(name).delete(body.ids, filter=body.filter)}

    @app.post("/collections/{name}/points/count", response_model=Count, dependencies=reader)
    def count_points(name: Name, body: CountPoints) -> Any:
        return {"count": db.get_collection(name).count(body.filter)}

    @app.post("/collections/{name}/search", response_model=SearchResult, dependencies=reader,
              openapi_extra=_SEARCH_DOC)
    def search(name: Name, body: Search = Depends(_SEARCH_BODY)) -> Any:
        given = sum(v is not None for v in (body.vector, body.vectors, body.vectors_base64))
        if given > 1 or (given == 0 and body.text is None):
            raise errors.InvalidArgumentError("search takes vector, vectors or vectors_base64 (at most "
                                              "one), or text")
        col = db.get_collection(name)
        queries = None
        if given:
            with np.errstate(over="ignore"):  # out of float32 range: inf, refused as not finite
                queries = np.array(body.vector, np.float32) if body.vector is not None else _vectors(body, col.dim)
        one = body.vector is not None if given else isinstance(body.text, str)
        rows = col.search_rows(queries, body.k, text=body.text, mode=body.mode, filter=body.filter,
                               ef=body.ef, weights=body.weights, with_payload=body.with_payload,
                               with_vector=body.with_vector, with_document=body.with_document,
                               payload_text=True)
        metric = contract.hit_metric(body.mode or "vector", col.metric)
        sign, offset = (-1.0, 1.0) if metric in ("cosine", "ip") else (-1.0, 0.0)  # Hit.score
        frag = orjson.Fragment  # payloads go out as the JSON text they are stored as
        out = [[{"id": key, "score": offset + sign * d, "distance": d,
                 "payload": None if payload is None else frag(payload), "vector": vector, "document": doc}
                for key, d, payload, vector, doc in row] for row in rows]
        return _json({"hits": out[0]} if one else {"results": out})

    @app.post("/collections/{name}/points/scan", response_model=ScanPage, dependencies=reader)
    def scan_points(name: Name, body: ScanRequest) -> Any:
        keys, vectors, payloads, cursor = db.get_collection(name).scan_page(body.after, body.limit)
        frag = orjson.Fragment
        return _json({"ids": keys, "vectors": vectors.tolist(), "payloads": [frag(p) for p in payloads],
                      "next": cursor})

    @app.post("/collections/{name}/checkpoint", response_model=Done, dependencies=writer)
    def checkpoint(name: Name) -> Any:
        db.get_collection(name).checkpoint()
        return {"ok": True}

    @app.post("/collections/{name}/compact", response_model=Done, dependencies=writer)
    def compact(name: Name) -> Any:
        db.get_collection(name).compact()
        return {"ok": True}

    @app.post("/collections/{name}/payload-index", response_model=Done, dependencies=writer)
    def payload_index(name: Name, body: PayloadIndex) -> Any:
        db.get_collection(name).create_payload_index(body.field)
        return {"ok": True}

    return app


def _matrix(rows: list[list[float]], dim: int, name: str) -> np.ndarray:
    """float32 (n, dim) from JSON rows; ragged rows raise naming ``name``."""
    if not rows:
        return np.zeros((0, dim), np.float32)
    try:
        with np.errstate(over="ignore"):  # out of float32 range: inf, refused as not finite
            return np.array(rows, np.float32)
    except ValueError:
        raise errors.InvalidArgumentError(f"{name} must be rows of equal length") from None


def _vectors(body: Any, dim: int) -> np.ndarray:
    """The request's vectors, from ``vectors`` or ``vectors_base64`` (exactly one)."""
    if (body.vectors is None) == (body.vectors_base64 is None):
        raise errors.InvalidArgumentError("give vectors or vectors_base64 (exactly one)")
    if body.vectors is not None:
        return _matrix(body.vectors, dim, "vectors")
    try:
        raw = base64.b64decode(body.vectors_base64, validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidArgumentError("vectors_base64 is not valid base64") from None
    if len(raw) % (4 * dim):
        raise errors.DimensionMismatchError(
            f"vectors_base64 holds {len(raw)} bytes, not a whole number of {dim}-d float32 rows")
    return np.frombuffer(raw, "<f4").reshape(-1, dim).astype(np.float32)


def _info(col: Any) -> dict[str, Any]:
    stats = col.stats()
    return {"name": col.name, "dim": col.dim, "metric": col.metric, "m": col.config["m"],
            "ef_construction": col.config["ef_construction"], "on_disk": col.config.get("on_disk", False),
            "embedding": col.config.get("embedding"),
            "count": stats["count"],
            "rows": stats["rows"], "deleted_rows": stats["deleted_rows"],
            "segments": stats["segments"], "log_records": stats["log_records"],
            "checkpoints": stats["checkpoints"]}


def _version() -> str:
    from shoal import __version__

    return __version__


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (localhost or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(path: str | os.PathLike, host: str = "127.0.0.1", port: int = 6333, *,
          api_key: str | None = None, read_only_api_key: str | None = None,
          allow_unauthenticated: bool = False, read_only: bool = False,
          max_body_bytes: int = MAX_BODY_BYTES, log_level: str = "info") -> None:
    """Serve the database at ``path`` until interrupted. Keys default to the environment
    variables ``SHOAL_API_KEY`` and ``SHOAL_READ_ONLY_API_KEY``. Without a key, only a loopback
    address may be bound unless ``allow_unauthenticated``."""
    import uvicorn

    api_key = api_key or os.environ.get("SHOAL_API_KEY") or None
    read_only_api_key = read_only_api_key or os.environ.get("SHOAL_READ_ONLY_API_KEY") or None
    if not (api_key or read_only_api_key) and not is_loopback(host) and not allow_unauthenticated:
        raise errors.InvalidArgumentError(
            f"refusing to serve {host} without an API key: set --api-key (or SHOAL_API_KEY), bind "
            "127.0.0.1, or pass --allow-unauthenticated")
    db = open_database(path, read_only=read_only)
    try:
        app = create_app(db, api_key=api_key, read_only_api_key=read_only_api_key,
                         max_body_bytes=max_body_bytes)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        db.close()
