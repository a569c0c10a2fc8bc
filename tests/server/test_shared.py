"""One set of collection tests, run against the embedded database and against a real server
through shoal.Client: the same code, the same results, the same typed errors."""

import numpy as np
import pytest

import shoal


def vectors(n, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_collections_lifecycle(database):
    assert database.list_collections() == []
    col = database.create_collection("docs", dim=8, metric="l2")
    assert (col.name, col.dim, col.metric) == ("docs", 8, "l2")
    assert database.list_collections() == ["docs"]
    assert database.get_collection("docs").dim == 8
    with pytest.raises(shoal.CollectionExistsError):
        database.create_collection("docs", dim=8)
    database.drop_collection("docs")
    assert database.list_collections() == []
    with pytest.raises(shoal.CollectionNotFoundError):
        database.get_collection("docs")
    with pytest.raises(KeyError):
        database.drop_collection("docs")


def test_points_search_and_filters(database):
    col = database.create_collection("c", dim=8, metric="cosine")
    x = vectors(300, seed=1)
    ids = list(range(290)) + [f"doc-{i}" for i in range(10)]
    payloads = [{"g": i % 3, "tags": [f"t{i % 2}"], "meta": {"year": 2000 + i % 25}} for i in range(300)]
    col.upsert(ids[:150], x[:150], payloads[:150])
    col.upsert(ids[150:], x[150:], payloads[150:])
    assert col.count() == 300 and len(col) == 300
    assert col.count({"g": 1}) == 100
    assert col.count({"meta.year": {"$gte": 2020}, "tags": "t0"}) == sum(
        1 for i in range(300) if 2000 + i % 25 >= 2020 and i % 2 == 0)
    got = col.get([5, "doc-3", 999])
    assert got[0]["id"] == 5 and got[0]["payload"] == payloads[5]
    np.testing.assert_allclose(got[0]["vector"], x[5] / np.linalg.norm(x[5]), rtol=1e-6)
    assert got[1]["id"] == "doc-3" and got[2] is None
    hits = col.search(x[7], k=5, ef=300)
    assert hits[0].id == 7 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload == payloads[7] and hits[0].vector is None
    batch = col.search(x[:4], k=3, ef=300, filter={"g": 2}, with_payload=False, with_vector=True)
    assert len(batch) == 4 and all(len(r) == 3 for r in batch)
    for row in batch:
        for h in row:
            assert h.payload is None and h.vector.shape == (8,)
            assert payloads[ids.index(h.id)]["g"] == 2
    assert col.delete(ids=[5, "doc-3", 12345]) == 2
    assert col.delete(filter={"g": 0}) == 100  # 5 and doc-3 (row 293) have g == 2
    assert col.get([5]) == [None]
    assert col.count() == 300 - 2 - 100
    col.upsert([6], x[:1] * -1, [{"g": 9}])  # 6 was deleted (g == 0): back
    assert col.get([6])[0]["payload"] == {"g": 9}
    col.create_payload_index("g")
    assert col.count({"g": 9}) == 1
    col.compact()
    assert col.count() == 199
    assert col.search(-x[0], k=1, ef=300)[0].id == 6


def test_same_results_embedded_and_remote(tmp_path, live_server):
    x = vectors(500, dim=16, seed=2)
    q = vectors(20, dim=16, seed=3)
    payloads = [{"even": i % 2 == 0} for i in range(500)]
    local = shoal.open(tmp_path / "local")
    remote = shoal.Client(live_server().url)                               # vectors as base64
    remote_json = shoal.Client(live_server().url, vector_encoding="json")  # as lists of numbers
    try:
        results = []
        for db in (local, remote, remote_json):
            col = db.create_collection("c", dim=16, metric="ip")
            for lo in range(0, 500, 100):
                col.upsert(list(range(lo, lo + 100)), x[lo:lo + 100], payloads[lo:lo + 100])
            found = col.search(q, k=10, ef=64, filter={"even": True})
            results.append([[(h.id, round(h.distance, 4)) for h in row] for row in found])
        assert results[0] == results[1] == results[2]
    finally:
        local.close()
        remote.close()
        remote_json.close()


def test_bad_input_raises_the_same_typed_errors(database):
    col = database.create_collection("c", dim=3, metric="cosine")
    col.upsert([1, 2], np.eye(3)[:2], [{"a": 1}, {"a": 2}])
    cases = [
        (lambda: col.upsert([3], np.ones((1, 4))), ValueError, "dimension 3"),
        (lambda: col.upsert([3], [[np.nan, 0, 0]]), ValueError, "NaN"),
        (lambda: col.upsert([3], [[0.0, 0, 0]]), ValueError, "zero length"),
        (lambda: col.upsert([3.5], np.ones((1, 3))), TypeError, "int or a string"),
        (lambda: col.upsert([3], np.ones((1, 3)), [{"a": {1, 2}}]), TypeError, "not JSON"),
        (lambda: col.upsert([3], np.ones((1, 3)), ["text"]), TypeError, "JSON object"),
        (lambda: col.search(np.ones(3), filter={"a": {"$bad": 1}}), shoal.FilterError, "unknown operator"),
        (lambda: col.search(np.ones(3), k=0), ValueError, "k must be"),
        (lambda: col.search(np.ones(5)), ValueError, "dimension 3"),
        (lambda: col.delete(), ValueError, "exactly one"),
        (lambda: database.get_collection("nope"), KeyError, "nope"),
        (lambda: database.create_collection("../x", dim=3), ValueError, "not valid"),
        (lambda: database.create_collection("x", dim=0), ValueError, "dim"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    assert col.count() == 2 and [g["payload"] for g in col.get([1, 2])] == [{"a": 1}, {"a": 2}]
