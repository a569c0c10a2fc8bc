"""The HTTP layer itself: keys, limits, request validation, error bodies, the schema."""

import httpx
import numpy as np
import pytest

import shoal
from shoal.server import is_loopback, serve


def test_keys_401_and_403(live_server):
    srv = live_server(api_key="rw-secret", read_only_api_key="ro-secret")
    with httpx.Client(base_url=srv.url) as http:
        assert http.get("/collections").status_code == 401
        assert http.get("/collections", headers={"api-key": "wrong"}).status_code == 401
        body = http.get("/collections", headers={"api-key": "wrong"}).json()
        assert body["error"]["type"] == "AuthenticationError"
        assert http.get("/collections", headers={"api-key": "ro-secret"}).json() == {"collections": []}
        ro = http.put("/collections/c", json={"dim": 2}, headers={"Authorization": "Bearer ro-secret"})
        assert ro.status_code == 403 and ro.json()["error"]["type"] == "ReadOnlyError"
        rw = http.put("/collections/c", json={"dim": 2}, headers={"Authorization": "Bearer rw-secret"})
        assert rw.status_code == 200 and rw.json()["dim"] == 2
        assert http.get("/healthz").status_code == 200  # liveness needs no key
    with pytest.raises(shoal.AuthenticationError):
        shoal.Client(srv.url).list_collections()
    with shoal.Client(srv.url, api_key="ro-secret") as ro_client:
        col = ro_client.get_collection("c")
        with pytest.raises(shoal.ReadOnlyError):
            col.upsert([1], [[1.0, 0.0]])
    with shoal.Client(srv.url, api_key="rw-secret") as rw_client:
        rw_client.get_collection("c").upsert([1], [[1.0, 0.0]])
    with shoal.Client(srv.url, api_key="ro-secret") as ro_client:
        assert ro_client.get_collection("c").search([1.0, 0.1], k=1)[0].id == 1


def test_body_limit_413(live_server):
    srv = live_server(max_body_bytes=10_000)
    with shoal.Client(srv.url) as client:
        col = client.create_collection("c", dim=64)
        col.upsert(list(range(5)), np.ones((5, 64)))
        with pytest.raises(shoal.PayloadTooLargeError):
            col.upsert(list(range(100)), np.ones((100, 64)))
        with httpx.Client(base_url=srv.url) as http:  # streamed, no content-length
            r = http.put("/collections/c/points", content=iter([b"{" + b" " * 20_000 + b"}"]))
            assert r.status_code == 413
        assert col.count() == 5


def test_request_validation_names_the_field(live_server):
    srv = live_server()
    with httpx.Client(base_url=srv.url) as http:
        http.put("/collections/c", json={"dim": 3})
        r = http.post("/collections/c/search", json={"vector": [1, 0, 0], "k": 0})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "k"]
        r = http.put("/collections/c/points", json={"ids": [1], "vectors": [[1, 0, 0]], "extra": 1})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "extra"]
        r = http.put("/collections/c/points", json={"ids": [1, 2], "vectors": [[1, 0, 0], [1, 0]]})
        assert r.status_code == 400 and "equal length" in r.json()["error"]["message"]
        r = http.post("/collections/c/search", json={"vector": [1, 0], "k": 1})
        assert r.status_code == 400 and r.json()["error"]["type"] == "DimensionMismatchError"
        r = http.post("/collections/c/search", json={"vectors_base64": "not base64!"})
        assert r.status_code == 400 and "base64" in r.json()["error"]["message"]
        r = http.post("/collections/c/search", json={"vectors_base64": "AAAAAAAAAAA="})  # 8 bytes
        assert r.status_code == 400 and r.json()["error"]["type"] == "DimensionMismatchError"
        r = http.post("/collections/c/search", json={"vector": [1, 0, 0], "vectors": [[1, 0, 0]]})
        assert r.status_code == 400 and "at most one" in r.json()["error"]["message"]
        r = http.post("/collections/c/search", json={"k": 1})  # neither vectors nor text
        assert r.status_code == 400 and "or text" in r.json()["error"]["message"]
        r = http.post("/collections/c/search", json={"vector": [1, 0, 0], "filter": {"a": {"$x": 1}}})
        assert r.status_code == 400 and r.json()["error"]["type"] == "FilterError"
        assert http.get("/collections/..%2F..%2Fetc").status_code in (404, 422)
        assert http.get("/collections/nope").status_code == 404
        assert http.get("/collections/nope").json()["error"]["type"] == "CollectionNotFoundError"
        schema = http.get("/openapi.json").json()
        assert "/collections/{name}/search" in schema["paths"]


def test_refuses_to_bind_beyond_loopback_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("SHOAL_API_KEY", raising=False)
    monkeypatch.delenv("SHOAL_READ_ONLY_API_KEY", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(shoal.InvalidArgumentError, match="without an API key"):
        serve(tmp_path / "db", host="0.0.0.0", port=1)
    assert not (tmp_path / "db").exists()  # refused before opening anything
