"""Search restricted to an allowed set of ids: recall against exact filtered search."""

import json

import numpy as np
import pytest

import shoal
from shoal.datasets import BUNDLED, recall_at_k


@pytest.fixture(scope="module")
def payloads():
    return [json.loads(line) for line in (BUNDLED / "base_payloads.jsonl").read_text().splitlines()]


def filtered_truth(queries, base, mask, k=10):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    sims = np.where(mask[None, :], q @ b.T, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def selections(payloads):
    """Real filters on the slice at about 70%, 10%, 1% and 0.1% selectivity."""
    lex = np.array([p["lexname"] for p in payloads])
    names, counts = np.unique(lex, return_counts=True)
    out = {"pos=noun": np.array([p["pos"] == "noun" for p in payloads])}
    for share in (0.1, 0.01, 0.001):
        name = names[np.argmin(np.abs(counts / len(lex) - share))]
        out[f"lexname={name}"] = lex == name
    return out


@pytest.mark.parametrize("path", ["chosen", "graph", "exact"])
def test_filtered_recall_at_every_selectivity(built10k, wordnet10k, payloads, path):
    for label, mask in selections(payloads).items():
        ids = np.flatnonzero(mask)
        found, dist = built10k.search(wordnet10k.queries, 10, ef=64, allowed=ids,
                                      filter_path="auto" if path == "chosen" else path)
        gt = filtered_truth(wordnet10k.queries, wordnet10k.base, mask)
        real = found >= 0
        assert np.isin(found[real], ids).all(), label
        assert recall_at_k(found, gt) >= 0.95, (label, path)
        assert np.all(np.diff(dist, axis=1)[real[:, 1:]] >= 0), label


def test_both_paths_report_the_same_distances(built10k, wordnet10k, payloads):
    ids = np.flatnonzero(selections(payloads)["pos=noun"])
    q = wordnet10k.queries[:20]
    exact_ids, exact_d = built10k.search(q, 5, ef=200, allowed=ids, filter_path="exact")
    graph_ids, graph_d = built10k.search(q, 5, ef=200, allowed=ids, filter_path="graph")
    same = exact_ids == graph_ids
    assert same.mean() > 0.95
    np.testing.assert_allclose(exact_d[same], graph_d[same], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("force", ["graph", "exact"])
def test_small_and_empty_allowed_sets(force):
    index = shoal.Index(4, "l2", m=4)
    data = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    index.add(data, ids=np.arange(1000, 1300))
    labels, dist = index.search(data[:3], k=5, allowed=[1007, 1100, 99999], filter_path=force)
    assert set(labels[:, :2].ravel()) <= {1007, 1100} and (labels[:, 2:] == -1).all()
    assert np.isinf(dist[:, 2:]).all()
    assert labels[0, 0] in (1007, 1100)
    labels, _ = index.search(data[:3], k=5, allowed=[], filter_path=force)
    assert (labels == -1).all()
    one, _ = index.search(data[7], k=1, allowed=[1007], filter_path=force)
    assert one.tolist() == [1007]


def test_bad_allowed_argument(built10k, wordnet10k):
    with pytest.raises(TypeError, match="allowed"):
        built10k.search(wordnet10k.queries[:2], 5, allowed=["a"])
    with pytest.raises(ValueError, match="allowed"):
        built10k.search(wordnet10k.queries[:2], 5, allowed=[[1, 2]])


def test_an_unknown_filter_path_is_refused(built10k, wordnet10k):
    with pytest.raises(ValueError, match="filter_path"):
        built10k.search(wordnet10k.queries[:2], 5, allowed=[1], filter_path="fast")
