"""Collections: behaviour against brute force, persistence, locking and input errors."""

import subprocess
import sys

import numpy as np
import pytest

import shoal


SMALL = shoal.Policy(seal_rows=150, checkpoint_min_rows=60)


@pytest.fixture
def small_segments():
    return {"policy": SMALL}


def vectors(n, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def brute(col_vectors, q, k, metric):
    keys = list(col_vectors)
    x = np.array([col_vectors[key] for key in keys])
    if metric == "l2":
        d = ((x - q) ** 2).sum(1)
    else:
        qq = q / np.linalg.norm(q) if metric == "cosine" else q
        xx = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
        d = 1 - xx @ qq
    order = np.argsort(d, kind="stable")[:k]
    return [keys[i] for i in order], d[order]


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_search_matches_brute_force_through_seals_and_deletes(tmp_path, small_segments, metric):
    model = {}
    with shoal.open(tmp_path / "db", **small_segments) as db:
        col = db.create_collection("c", dim=8, metric=metric)
        x = vectors(400, seed=1)
        for lo in range(0, 400, 37):
            ids = list(range(lo, min(lo + 37, 400)))
            col.upsert(ids, x[lo:lo + 37], [{"n": i, "even": i % 2 == 0} for i in ids])
            model.update({i: x[i] for i in ids})
        col.upsert([5, 6], vectors(2, seed=9), [{"n": 5}, {"n": 6}])   # replace
        model.update({5: vectors(2, seed=9)[0], 6: vectors(2, seed=9)[1]})
        assert col.delete(ids=list(range(100, 150))) == 50
        for i in range(100, 150):
            model.pop(i)
        assert len(col.stats()["segments"]) >= 2
        assert col.count() == len(model)
        q = vectors(5, seed=3)
        for qi, hits in zip(q, col.search(q, k=10, ef=400)):
            want, dist = brute(model, qi, 10, metric)
            assert [h.id for h in hits] == want
            np.testing.assert_allclose([h.distance for h in hits], dist, rtol=1e-4, atol=1e-5)
        even = {key: v for key, v in model.items() if key % 2 == 0}
        hits = col.search(q[0], k=10, ef=400, filter={"even": True})
        assert [h.id for h in hits] == brute(even, q[0], 10, metric)[0]


def test_ids_payloads_get_and_scores(tmp_path):
    with shoal.open(tmp_path / "db") as db:
        col = db.create_collection("docs", dim=3, metric="cosine")
        col.upsert([1, "a-uuid", 2**40], np.eye(3), [{"lang": "en", "tags": ["x"]}, None, {"y": 2021}])
        got = col.get([1, "a-uuid", 7])
        assert got[0]["id"] == 1 and got[0]["payload"] == {"lang": "en", "tags": ["x"]}
        np.testing.assert_allclose(got[0]["vector"], [1, 0, 0])
        assert got[1]["payload"] == {} and got[2] is None
        hit = col.search([1.0, 0.1, 0], k=1, with_vector=True)[0]
        assert hit.id == 1 and hit.score == pytest.approx(1 - hit.distance) and hit.vector is not None
        assert col.count({"tags": "x"}) == 1 and len(col) == 3
        assert col.delete(filter={"y": {"$gte": 2000}}) == 1
        assert col.get([2**40]) == [None]
        assert db.list_collections() == ["docs"]


def test_reopen_recovers_sealed_segments_and_the_log(tmp_path, small_segments):
    x = vectors(250, seed=4)
    with shoal.open(tmp_path / "db", **small_segments) as db:
        col = db.create_collection("c", dim=8, metric="l2")
        col.upsert(list(range(200)), x[:200], [{"i": i} for i in range(200)])  # sealed
        col.upsert(list(range(200, 250)), x[200:], [{"i": i} for i in range(200, 250)])  # in the log
        col.delete(ids=[3, 4, 200])
        before = col.search(x[:4], k=5, ef=300)
        stats = col.stats()
    assert len(stats["segments"]) >= 2 and stats["log_records"] > 0
    with shoal.open(tmp_path / "db", **small_segments) as db:
        col = db.get_collection("c")
        assert col.count() == 247 and col.get([3, 200]) == [None, None]
        after = col.search(x[:4], k=5, ef=300)
        assert [[h.id for h in r] for r in after] == [[h.id for h in r] for r in before]
        col.compact()
        assert len(col.stats()["segments"]) == 1 and col.stats()["deleted_rows"] == 0
        assert [[h.id for h in r] for r in col.search(x[:4], k=5, ef=300)] == [[h.id for h in r] for r in before]
    with shoal.open(tmp_path / "db", **small_segments) as db:
        assert db.get_collection("c").count() == 247


def test_one_writer_process_and_read_only_opens(tmp_path):
    path = tmp_path / "db"
    with shoal.open(path) as db:
        db.create_collection("c", dim=2).upsert([1], [[1.0, 0.0]])
    holder = subprocess.Popen([sys.executable, "-c", (
        "import shoal, sys, time; db = shoal.open(sys.argv[1]); print('open', flush=True); time.sleep(60)"),
        str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(shoal.LockedError, match="another process"):
            shoal.open(path)
        ro = shoal.open(path, read_only=True)
        col = ro.get_collection("c")
        assert col.count() == 1 and col.search([1.0, 0.0], k=1)[0].id == 1
        with pytest.raises(shoal.ReadOnlyError):
            col.upsert([2], [[0.0, 1.0]])
        with pytest.raises(shoal.ReadOnlyError):
            ro.create_collection("d", dim=2)
        ro.close()
    finally:
        holder.kill()
        holder.wait()
    shoal.open(path).close()  # the lock died with its holder


def test_collection_management_errors(tmp_path):
    with shoal.open(tmp_path / "db") as db:
        db.create_collection("a", dim=4)
        with pytest.raises(shoal.CollectionExistsError):
            db.create_collection("a", dim=4)
        with pytest.raises(KeyError, match="no collection named 'zz'"):
            db.get_collection("zz")
        for bad in ("../x", "a/b", "", ".hidden", "x" * 65, "a..b"):
            with pytest.raises(ValueError, match="not valid"):
                db.create_collection(bad, dim=4)
        with pytest.raises(TypeError):
            db.create_collection(3, dim=4)
        with pytest.raises(ValueError, match="metric"):
            db.create_collection("b", dim=4, metric="hamming")
        db.drop_collection("a")
        assert db.list_collections() == []
        with pytest.raises(shoal.CollectionNotFoundError):
            db.drop_collection("a")


def test_bad_input_changes_nothing(tmp_path):
    with shoal.open(tmp_path / "db") as db:
        col = db.create_collection("c", dim=3, metric="cosine")
        col.upsert([1, 2], np.eye(3)[:2], [{"a": 1}, {"a": 2}])
        def state():
            got = col.get([1, 2])
            return (col.count(), col.stats(), [(g["id"], g["payload"], g["vector"].tolist()) for g in got])

        before = state()
        cases = [
            (lambda: col.upsert([3], np.ones((1, 4))), ValueError, "dimension 3"),
            (lambda: col.upsert([3], [[np.nan, 0, 0]]), ValueError, "NaN"),
            (lambda: col.upsert([3], [[0.0, 0, 0]]), ValueError, "zero length"),
            (lambda: col.upsert([3.5], np.ones((1, 3))), TypeError, "int or a string"),
            (lambda: col.upsert([3, 3], np.ones((2, 3))), ValueError, "repeated"),
            (lambda: col.upsert([3], np.ones((2, 3))), ValueError, "1 entries but vectors has 2"),
            (lambda: col.upsert([3], np.ones((1, 3)), [{"a": {1, 2}}]), TypeError, "not JSON"),
            (lambda: col.upsert([3], np.ones((1, 3)), ["text"]), TypeError, "JSON object"),
            (lambda: col.search(np.ones(3), filter={"a": {"$bad": 1}}), shoal.FilterError, "unknown operator"),
            (lambda: col.search(np.ones(3), k=0), ValueError, "k must be"),
            (lambda: col.delete(), ValueError, "exactly one"),
            (lambda: col.delete(ids=[1], filter={"a": 1}), ValueError, "exactly one"),
            (lambda: col.delete(filter={"$or": []}), shoal.FilterError, "non-empty"),
        ]
        for call, exc, match in cases:
            with pytest.raises(exc, match=match):
                call()
        assert state() == before


def test_batch_durability_flushes_on_close(tmp_path):
    with shoal.open(tmp_path / "db", durability="batch") as db:
        col = db.create_collection("c", dim=2, metric="l2")
        col.upsert([1, 2], [[0.0, 1.0], [1.0, 0.0]])
        col.flush()
        col.upsert([3], [[1.0, 1.0]])
    with shoal.open(tmp_path / "db") as db:
        assert db.get_collection("c").count() == 3
    with pytest.raises(ValueError, match="durability"):
        shoal.open(tmp_path / "db2", durability="sometimes")
    assert not (tmp_path / "db2").exists()


def test_payload_index_gives_the_same_results_and_persists(tmp_path):
    x = vectors(300, seed=5)
    flt = {"g": {"$in": [1, 3]}, "tags": "t2"}
    with shoal.open(tmp_path / "db") as db:
        col = db.create_collection("c", dim=8, metric="l2")
        col.upsert(list(range(300)), x, [{"g": i % 5, "tags": [f"t{i % 3}"]} for i in range(300)])
        before = [[h.id for h in r] for r in col.search(x[:5], k=7, filter=flt, ef=300)]
        col.create_payload_index("g")
        col.create_payload_index("tags")
        after = [[h.id for h in r] for r in col.search(x[:5], k=7, filter=flt, ef=300)]
        assert after == before and col.count(flt) == 40  # 2/5 of g x 1/3 of tags
    with shoal.open(tmp_path / "db") as db:
        col = db.get_collection("c")
        assert col._store.indexed == {"g", "tags"}
        col.upsert([1000], vectors(1, seed=6), [{"g": 1, "tags": ["t2"]}])
        assert col.count(flt) == 41


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_every_upserted_row_is_reachable_at_once(tmp_path, metric):
    """Batches linked into a growing active segment (past the size where each add runs the
    full reachability pass) are all reachable by the graph search as soon as upsert returns:
    a search whose beam holds every row returns every row. Inner product with rows of
    different lengths is the hard case (short rows are nobody's neighbour)."""
    rng = np.random.default_rng(11)
    with shoal.open(tmp_path / "db") as db:
        col = db.create_collection("c", dim=16, metric=metric)
        centers = rng.standard_normal((30, 16))
        for b in range(40):
            # correlated batches: 100 rows around one center, like a user's related documents
            x = (centers[b % 30] + 0.3 * rng.standard_normal((100, 16))) * rng.uniform(0.2, 2, (100, 1))
            col.upsert(list(range(b * 100, b * 100 + 100)), x.astype(np.float32))
            n = (b + 1) * 100
            got = {h.id for h in col.search(x[0], k=n, ef=n, with_payload=False)}
            assert got == set(range(n)), f"after batch {b}: {n - len(got)} rows unreachable"
        assert col.stats()["segments"][-1]["active"]


def test_graph_view_stays_valid_while_the_index_grows():
    """A search over a view taken before more adds answers as it did (within the view's rows)."""
    x = np.random.default_rng(12).standard_normal((3000, 16)).astype(np.float32)
    index = shoal.Index(16, "l2")
    index.add(x[:1000])
    view = index.view()
    q = x[:50] + 0.01
    before = index.search_masked(q, 5, 64, None, None, view=view)
    for lo in range(1000, 3000, 250):
        index.add(x[lo:lo + 250], repair=False)
        ids, dists = index.search_masked(q, 5, 64, None, None, view=view)
        assert (ids < 1000).all() and (ids >= 0).all()
        # the same rows can be reached another way through rewritten links, never worse ones
        np.testing.assert_allclose(dists, before[1], rtol=1e-5, atol=1e-6)


def test_the_writer_does_not_wait_for_calibration(tmp_path, monkeypatch, wordnet10k):
    """The active segment is calibrated on a thread of its own, over the segment as it stood
    when it fell due; upserts go on meanwhile and the result is installed when it ends."""
    import threading

    started, release = threading.Event(), threading.Event()
    seen = {}
    real = shoal.Index.calibration_task

    def held_task(self):
        task = real(self)
        if task is None:
            return None

        def run():
            seen["thread"] = threading.current_thread()
            started.set()
            release.wait(5)  # (a writer that waited for it would sit here)
            task()
        return run

    monkeypatch.setattr(shoal.Index, "calibration_task", held_task)
    with shoal.open(tmp_path / "db") as db:
        col = db.create_collection("c", dim=384)
        col.upsert(list(range(2_000)), wordnet10k.base[:2_000])  # due: 1,000 rows and never calibrated
        assert started.wait(30)
        col.upsert(list(range(2_000, 3_000)), wordnet10k.base[2_000:3_000])
        index = col._snap.segments[-1].index
        assert seen["thread"] is not threading.current_thread()
        assert index.calibration is None  # still held
        release.set()
        col._join_calibration()
        assert index.calibration is not None and index.calibration["count"] == 2_000


def test_default_search_is_calibrated_by_the_writer(tmp_path, wordnet10k):
    """A collection searched without ef uses each segment's calibrated beam: the writer
    calibrates as the active segment grows (readers never pay for it), and reopened files
    keep it. Recall@10 >= 0.95 on the real slice with default settings."""
    from shoal.datasets import recall_at_k

    with shoal.open(tmp_path / "db") as db:
        col = db.create_collection("c", dim=384)
        for lo in range(0, 10_000, 2_000):
            col.upsert(list(range(lo, lo + 2_000)), wordnet10k.base[lo:lo + 2_000])
        index = col._snap.segments[-1].index
        col._join_calibration()  # it runs beside the writer
        assert index.calibration is not None and index.calibration["count"] >= 8_000
        found = np.array([[h.id for h in hits] for hits in col.search(wordnet10k.queries, k=10, with_payload=False)])
        assert recall_at_k(found, wordnet10k.gt) >= 0.95
        col.checkpoint()
    with shoal.open(tmp_path / "db") as db:
        index = db.get_collection("c")._snap.segments[-1].index
        assert index.calibration is not None
