"""Sharded collections on a local Ray (one cluster for the module): the same results as one
embedded collection, shards killed during ingest, reattaching after a restart, typed errors."""

import os
import signal
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import shoal  # noqa: E402
import shoal.ray as sray  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def vectors(n, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def ids_of(hits):
    return [(h.id, round(h.distance, 4)) for h in hits]


def test_same_results_as_one_collection(cluster, tmp_path):
    x = vectors(600, seed=1)
    keys = list(range(500)) + [f"k{i}" for i in range(100)]
    payloads = [{"g": i % 4} for i in range(600)]
    docs = sray.create_collection("docs", dim=8, metric="l2", shards=3, path=str(tmp_path / "ray"))
    with shoal.open(tmp_path / "one") as db:
        one = db.create_collection("docs", dim=8, metric="l2")
        for col in (docs, one):
            for lo in range(0, 600, 150):
                col.upsert(keys[lo:lo + 150], x[lo:lo + 150], payloads[lo:lo + 150])
            assert col.delete(ids=[3, "k7", 999]) == 2
            assert col.delete(filter={"g": 3}) == 148  # 150, less 3 and "k7" (row 507)
            col.upsert([5], x[:1] * 2, [{"g": 9}])
        assert docs.count() == one.count() == 600 - 2 - 148
        assert docs.count({"g": 1}) == one.count({"g": 1})
        q = vectors(10, seed=2)
        for flt in (None, {"g": {"$in": [0, 9]}}):
            # ef >= every shard's size: exact on small data, so the merged lists are identical
            got = docs.search(q, k=10, ef=600, filter=flt)
            want = one.search(q, k=10, ef=600, filter=flt)
            assert [ids_of(r) for r in got] == [ids_of(r) for r in want]
            assert got.missing_shards == []
        assert [g and g["payload"] for g in docs.get([5, "k1", 3])] == [{"g": 9}, {"g": 1}, None]
        sizes = [s["count"] for s in docs.stats()["per_shard"]]
        assert len(sizes) == 3 and min(sizes) > 100  # the hash spreads the ids
        docs.compact()
        assert docs.count() == 450
    docs.close()


def test_shard_killed_during_ingest_loses_nothing(cluster, tmp_path):
    docs = sray.create_collection("k", dim=8, metric="cosine", shards=2, path=str(tmp_path / "ray"))
    acknowledged = []
    errors = []

    def ingest():
        try:
            for b in range(40):
                ids = list(range(b * 25, b * 25 + 25))
                docs.upsert(ids, vectors(25, seed=b), [{"b": b}] * 25)
                acknowledged.extend(ids)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    victim = docs.actor_pids()[0]
    writer = threading.Thread(target=ingest)
    writer.start()
    while len(acknowledged) < 250 and writer.is_alive():
        time.sleep(0.005)
    os.kill(victim, signal.SIGKILL)  # a real kill of a shard's process mid-ingest
    assert len(acknowledged) < 1000, "the ingest ended before the kill"
    writer.join(300)
    assert not errors, errors
    assert docs.actor_pids()[0] != victim  # restarted, reopened from its disk
    got = docs.get(acknowledged, with_vector=False)
    assert all(g is not None for g in got) and docs.count() == len(acknowledged) == 1000
    x = vectors(25, seed=7)
    hits = docs.search(x[3], k=1, ef=200)
    assert hits[0].id == 7 * 25 + 3
    docs.close()


def test_reattach_after_ray_restart(cluster, tmp_path):
    path = str(tmp_path / "ray")
    docs = sray.create_collection("r", dim=8, metric="ip", shards=2, path=path)
    docs.upsert(list(range(100)), vectors(100, seed=3))
    before = [ids_of(r) for r in docs.search(vectors(3, seed=4), k=5, ef=100)]
    docs.close()
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    again = sray.open_collection("r", path=path)
    assert again.count() == 100
    assert [ids_of(r) for r in again.search(vectors(3, seed=4), k=5, ef=100)] == before
    with pytest.raises(shoal.CollectionExistsError):
        sray.create_collection("r", dim=8, shards=2, path=path)
    with pytest.raises(shoal.CollectionNotFoundError):
        sray.open_collection("nope", path=path)
    again.close()


def test_bad_input_gets_the_embedded_errors_on_the_driver(cluster, tmp_path):
    docs = sray.create_collection("e", dim=3, shards=2, path=str(tmp_path / "ray"))
    cases = [
        (lambda: docs.upsert([1], np.ones((1, 4))), ValueError, "dimension 3"),
        (lambda: docs.upsert([1], [[np.nan, 0, 0]]), ValueError, "NaN"),
        (lambda: docs.upsert([1.5], np.ones((1, 3))), TypeError, "int or a string"),
        (lambda: docs.upsert([1], np.ones((1, 3)), [{"a": {1, 2}}]), TypeError, "not JSON"),
        (lambda: docs.search(np.ones(3), filter={"a": {"$bad": 1}}), shoal.FilterError, "unknown operator"),
        (lambda: docs.search(np.ones(3), k=0), ValueError, "k must be"),
        (lambda: docs.delete(), ValueError, "exactly one"),
        (lambda: sray.create_collection("../x", dim=3, shards=2, path=str(tmp_path)), ValueError, "not valid"),
        (lambda: sray.create_collection("y", dim=3, shards=0, path=str(tmp_path)), ValueError, "shards"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    assert docs.count() == 0
    docs.close()


def test_a_shard_that_stays_down_fails_loudly_or_partially(cluster, tmp_path):
    docs = sray.create_collection("p", dim=8, metric="l2", shards=2, path=str(tmp_path / "ray"),
                                  max_restarts=0, retries=(2, 0.05))
    x = vectors(200, seed=5)
    docs.upsert(list(range(200)), x)
    ray.kill(docs._actors[1], no_restart=True)
    with pytest.raises(sray.ShardUnavailableError, match=r"shards \[1\]"):
        docs.search(x[0], k=5)
    partial = docs.search(x[:3], k=5, ef=200, allow_partial=True)
    assert partial.missing_shards == [1]
    alive = {i for i in range(200) if sray.shard_of(i, 2) == 0}
    assert all(h.id in alive for row in partial for h in row) and all(len(r) == 5 for r in partial)


def test_import_parquet_and_arrays(cluster, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    x = vectors(300, seed=8)
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(300)], "vector": x.tolist(),
                             "g": [i % 3 for i in range(300)]}), tmp_path / "p.parquet")
    docs = sray.create_collection("imp", dim=8, metric="l2", shards=2, path=str(tmp_path / "ray"))
    assert docs.import_parquet(str(tmp_path / "p.parquet"), batch_size=64) == 300
    assert docs.import_arrays(x, ids=list(range(300)), batch_size=50, progress=False) == 300
    assert docs.count() == 600 and docs.count({"g": 2}) == 100
    assert docs.search(x[42], k=2, ef=300)[0].id in (42, "p42")
    docs.close()
