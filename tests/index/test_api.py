"""The public API: shapes, ids, padding, and a typed error for every bad input."""

import numpy as np
import pytest

import shoal
from tests.conftest import random_vectors


@pytest.fixture
def small():
    index = shoal.Index(8, "l2", m=4, ef_construction=16)
    index.add(random_vectors(50, 8), ids=np.arange(100, 150))
    return index


def snapshot(index):
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in vars(index).items()
            if k not in ("_rng", "_scratch", "last_add_stats", "last_search_evaluations")}


def assert_unchanged(index, before):
    after = snapshot(index)
    assert before.keys() == after.keys()
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, after[k], err_msg=k)
        else:
            assert v == after[k], k


def test_basic_properties(small):
    assert len(small) == 50 and small.dim == 8 and small.metric == "l2"
    assert 120 in small and np.int32(120) in small and 99 not in small and "x" not in small
    assert [120] not in small and 2**70 not in small and True not in small
    assert sorted(small.ids.tolist()) == list(range(100, 150))
    s = small.stats()
    assert s["count"] == 50 and s["levels"] >= 1 and s["memory_bytes"] > 50 * 8 * 4
    assert s["nodes_per_level"][0] == 50
    assert "Index(dim=8" in repr(small)


def test_default_ids_continue_after_the_largest():
    index = shoal.Index(4, "l2")
    assert index.add(random_vectors(3, 4)).tolist() == [0, 1, 2]
    assert index.add(random_vectors(2, 4, seed=1)).tolist() == [3, 4]
    index.add(random_vectors(1, 4, seed=2), ids=[100])
    assert index.add(random_vectors(1, 4, seed=3)).tolist() == [101]


def test_get_returns_stored_vectors(small):
    x = random_vectors(50, 8)
    np.testing.assert_array_equal(small.get([100, 149]), x[[0, 49]])
    np.testing.assert_array_equal(small.get(120), x[20])
    with pytest.raises(KeyError, match="7"):
        small.get([100, 7])


def test_cosine_stores_unit_vectors():
    index = shoal.Index(3, "cosine")
    index.add(np.array([[3.0, 0, 4.0]]))
    np.testing.assert_allclose(index.get(0), [0.6, 0, 0.8], rtol=1e-6)


def test_one_query_gives_1d_results(small):
    q = random_vectors(1, 8, seed=9)[0]
    labels, dist = small.search(q, k=3)
    assert labels.shape == (3,) and dist.shape == (3,)
    batch_labels, _ = small.search(q[None], k=3)
    assert batch_labels.shape == (1, 3)
    np.testing.assert_array_equal(labels, batch_labels[0])


def test_tiny_index_pads_results():
    index = shoal.Index(4, "l2")
    empty_labels, empty_dist = index.search(np.ones(4), k=3)
    assert empty_labels.tolist() == [-1, -1, -1] and np.isinf(empty_dist).all()
    index.add(random_vectors(2, 4), ids=[7, 8])
    labels, dist = index.search(random_vectors(5, 4, seed=1), k=4)
    assert (labels[:, :2] >= 7).all() and (labels[:, 2:] == -1).all()
    assert np.isinf(dist[:, 2:]).all() and np.isfinite(dist[:, :2]).all()


def test_empty_batches(small):
    before = snapshot(small)
    out = small.add(np.zeros((0, 8), np.float32))
    assert out.shape == (0,) and out.dtype == np.int64
    labels, dist = small.search(np.zeros((0, 8)), k=5)
    assert labels.shape == (0, 5) and dist.shape == (0, 5)
    assert_unchanged(small, before)


def test_capacity_grows_geometrically():
    index = shoal.Index(4, "l2")
    caps = []
    for i in range(40):
        index.add(random_vectors(5, 4, seed=i))
        caps.append(index.stats()["capacity"])
    assert len(set(caps)) < 15  # not one reallocation per call
    assert len(index) == 200


BAD_ADDS = [
    (lambda: random_vectors(3, 7), ValueError, "dimension 8"),
    (lambda: np.zeros((2, 3, 8)), ValueError, "3-D"),
    (lambda: np.array([[np.nan] * 8]), ValueError, "NaN or Inf"),
    (lambda: np.array([[np.inf] * 8]), ValueError, "NaN or Inf"),
    (lambda: np.full((1, 8), 1e300), ValueError, "NaN or Inf"),
    (lambda: np.array([["a"] * 8]), TypeError, "numeric"),
    (lambda: np.array([[1j] * 8]), TypeError, "numeric"),
    (lambda: "vectors", TypeError, "numeric"),
    (lambda: [[1, 2], [3]], ValueError, "rectangular"),
]


@pytest.mark.parametrize("make, exc, match", BAD_ADDS)
def test_bad_vectors_raise_and_change_nothing(small, make, exc, match):
    before = snapshot(small)
    with pytest.raises(exc, match=match):
        small.add(make())
    assert_unchanged(small, before)


@pytest.mark.parametrize("ids, exc, match", [
    ([1, 1], ValueError, r"repeated within the batch: \[1\]"),
    ([120, 5], ValueError, r"already in the index: \[120\]"),
    ([1.5, 2.5], TypeError, "integers"),
    ([1], ValueError, "1 entries but there are 2"),
    ([[1, 2]], ValueError, "1-D"),
])
def test_bad_ids_raise_and_change_nothing(small, ids, exc, match):
    before = snapshot(small)
    with pytest.raises(exc, match=match):
        small.add(random_vectors(2, 8, seed=5), ids=ids)
    assert_unchanged(small, before)
    with pytest.raises(shoal.ShoalError):
        small.add(random_vectors(2, 8, seed=5), ids=ids)


def test_zero_vector_under_cosine():
    index = shoal.Index(4, "cosine")
    with pytest.raises(ValueError, match=r"rows \[1\] have zero length"):
        index.add(np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
    assert len(index) == 0
    with pytest.raises(ValueError, match="zero length"):
        index.search(np.zeros(4))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(k=0), ValueError, "k must be >= 1"),
    (dict(k=-3), ValueError, "k must be >= 1"),
    (dict(k=2.5), TypeError, "k must be an integer"),
    (dict(k=10, ef=5), ValueError, r"ef must be >= k \(10\)"),
    (dict(k=1, num_threads=0), ValueError, "num_threads"),
    (dict(k=1, num_threads=10_000), ValueError, "num_threads"),
])
def test_bad_search_arguments(small, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        small.search(random_vectors(2, 8), **kwargs)


def test_bad_queries(small):
    with pytest.raises(ValueError, match="dimension 8"):
        small.search(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        small.search(np.full(8, np.nan))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(dim=0), ValueError, "dim must be >= 1"),
    (dict(dim=8, metric="hamming"), ValueError, "metric must be one of"),
    (dict(dim=8, m=1), ValueError, "m must be >= 2"),
    (dict(dim=8, ef_construction=0), ValueError, "ef_construction"),
    (dict(dim="8"), TypeError, "dim must be an integer"),
    (dict(dim=8, seed=-1), ValueError, "seed"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        shoal.Index(**kwargs)


def test_ids_beyond_int64_are_refused(small):
    with pytest.raises(ValueError, match="int64"):
        small.add(random_vectors(1, 8), ids=np.array([2**63], np.uint64))


def test_default_ids_cannot_overflow():
    index = shoal.Index(4, "l2")
    index.add(random_vectors(1, 4), ids=[np.iinfo(np.int64).max])
    with pytest.raises(ValueError, match="largest int64"):
        index.add(random_vectors(1, 4, seed=1))
    assert len(index) == 1


def test_concurrent_searches_from_python_threads(small):
    """Kernels release the GIL and each call takes its own scratch: threads get the same
    answers as one thread alone."""
    from concurrent.futures import ThreadPoolExecutor

    queries = [random_vectors(30, 8, seed=s) for s in range(16)]
    expected = [small.search(q, 5, ef=20, num_threads=1) for q in queries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda q: small.search(q, 5, ef=20, num_threads=1), queries))
    for (el, ed), (gl, gd) in zip(expected, got):
        np.testing.assert_array_equal(el, gl)
        np.testing.assert_array_equal(ed, gd)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint8])
def test_numeric_dtypes_are_converted(dtype):
    data = (np.random.default_rng(2).random((40, 6)) * 100).astype(dtype)
    index = shoal.Index(6, "l2")
    index.add(data)
    np.testing.assert_allclose(index.get(np.arange(40)), data.astype(np.float32))
    labels, dist = index.search(data[:3], k=1, ef=40)
    assert labels[:, 0].tolist() == [0, 1, 2] and np.allclose(dist[:, 0], 0)
