"""Recall against exact search, graph invariants and determinism on real data."""

import numpy as np
import pytest

import shoal
from shoal.datasets import recall_at_k


def graph_ok(index):
    index.check_integrity(reachable=True)  # raises CorruptIndexError naming what is broken
    stats = index.stats()
    assert stats["mean_degree_level0"] >= 1


def test_recall_on_real_slice(built10k, wordnet10k):
    found, dist = built10k.search(wordnet10k.queries, k=10, ef=64)
    assert recall_at_k(found, wordnet10k.gt) >= 0.95
    assert np.all(np.diff(dist, axis=1) >= 0)
    # distances are cosine distances to the stored vectors
    q = wordnet10k.queries / np.linalg.norm(wordnet10k.queries, axis=1, keepdims=True)
    expect = 1 - np.einsum("ij,ikj->ik", q, built10k.get(found.ravel()).reshape(*found.shape, -1))
    np.testing.assert_allclose(dist, expect, atol=1e-4)


def test_recall_reaches_099_with_larger_ef(built10k, wordnet10k):
    found, _ = built10k.search(wordnet10k.queries, k=10, ef=256)
    assert recall_at_k(found, wordnet10k.gt) >= 0.99


def test_graph_invariants(built10k):
    graph_ok(built10k)


def test_incremental_adds_keep_recall_and_invariants(wordnet10k):
    index = shoal.Index(384, "cosine", seed=3)
    for part in np.array_split(np.arange(10000), [37, 600, 3000, 9000]):
        index.add(wordnet10k.base[part], ids=part)
    graph_ok(index)
    found, _ = index.search(wordnet10k.queries, k=10, ef=64)
    assert recall_at_k(found, wordnet10k.gt) >= 0.95


def test_same_graph_for_one_and_two_threads(wordnet10k):
    base = wordnet10k.base[:4000]
    one = shoal.Index(384, seed=11)
    two = shoal.Index(384, seed=11)
    one.add(base, num_threads=1)
    two.add(base, num_threads=2)
    for name in ("_ids", "_levels", "_links0", "_deg0", "_up_offset", "_links_up", "_deg_up"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)
    r1 = one.search(wordnet10k.queries, 10, num_threads=1)
    r2 = two.search(wordnet10k.queries, 10, num_threads=2)
    np.testing.assert_array_equal(r1[0], r2[0])


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_other_metrics_against_brute_force(metric, wordnet10k):
    rng = np.random.default_rng(5)
    base = wordnet10k.base[:3000] * rng.uniform(0.5, 2.0, (3000, 1)).astype(np.float32)
    queries = wordnet10k.queries[:100]
    index = shoal.Index(384, metric)
    index.add(base)
    if metric == "l2":
        exact = ((queries[:, None, :] - base[None]) ** 2).sum(-1)
    else:
        exact = 1 - queries @ base.T
    gt = np.argsort(exact, axis=1)[:, :10]
    found, dist = index.search(queries, 10, ef=128)
    assert recall_at_k(found, gt) >= 0.95
    np.testing.assert_allclose(dist, np.take_along_axis(exact, found, 1), rtol=1e-3, atol=1e-3)


def test_full_dataset_recall(wordnet_full):
    """The whole 116,659-vector set: recall@10 >= 0.95 at ef=64 and >= 0.99 at ef=256."""
    index = shoal.Index(384, "cosine")
    index.add(wordnet_full.base)
    graph_ok(index)
    found, _ = index.search(wordnet_full.queries, 10, ef=64)
    assert recall_at_k(found, wordnet_full.gt) >= 0.95
    found, _ = index.search(wordnet_full.queries, 10, ef=256)
    assert recall_at_k(found, wordnet_full.gt) >= 0.99
