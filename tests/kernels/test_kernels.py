"""Kernels against plain numpy references."""

import numpy as np
import pytest

from shoal.kernels.build import select_neighbors, unreachable_nodes
from shoal.kernels.distance import IP, L2, distance, distances_to_rows, first_nonfinite_row, row_norms
from shoal.kernels.graph import BAD_LINK, DUPLICATE_LINK, OK, SELF_LOOP, check_graph
from shoal.kernels.search import next_tag, search_from
from tests.conftest import random_vectors


def test_distance_matches_numpy():
    x = random_vectors(50, 37, seed=1)
    for a in x[:5]:
        for b in x[5:15]:
            assert distance(a, b, IP) == pytest.approx(1 - a @ b, rel=1e-4, abs=1e-4)
            assert distance(a, b, L2) == pytest.approx(((a - b) ** 2).sum(), rel=1e-4)
    nodes = np.array([3, 7, 11], np.int32)
    np.testing.assert_allclose(distances_to_rows(x[0], x, nodes, L2),
                               ((x[nodes] - x[0]) ** 2).sum(1), rtol=1e-4)


def test_row_norms_and_nonfinite():
    x = random_vectors(20, 9)
    np.testing.assert_allclose(row_norms(x), np.linalg.norm(x, axis=1), rtol=1e-6)
    assert first_nonfinite_row(x) == -1
    x[13, 4] = np.nan
    x[17, 0] = np.inf
    assert first_nonfinite_row(x) == 13


def _select_reference(cand, dists, m, x):
    kept = []
    for c, d in zip(cand, dists):
        if len(kept) == m:
            break
        if all(((x[c] - x[s]) ** 2).sum() >= d for s in kept):
            kept.append(c)
    return kept


def test_select_neighbors_is_the_paper_heuristic():
    x = random_vectors(200, 8, seed=2)
    base = x[0]
    cand = np.arange(1, 200, dtype=np.int32)
    d = ((x[cand] - base) ** 2).sum(1).astype(np.float32)
    order = np.argsort(d)
    cand, d = cand[order], d[order]
    out = np.empty(16, np.int32)
    kept, _ = select_neighbors(cand, d, len(cand), 16, x, L2, out)
    assert out[:kept].tolist() == _select_reference(cand, d, 16, x)
    assert 0 < kept <= 16


def test_search_layer_on_complete_graph_is_exact():
    x = random_vectors(60, 6, seed=3)
    n = len(x)
    links = np.array([[j for j in range(n) if j != i] for i in range(n)], np.int32)
    degs = np.full(n, n - 1, np.int32)
    q = random_vectors(1, 6, seed=4)[0]
    ef = 10
    beam_d, beam_n = np.empty(ef, np.float32), np.empty(ef, np.int32)
    beam_x = np.empty(ef, np.bool_)
    buf_n, buf_d = np.empty(n, np.int32), np.empty(n, np.float32)
    visited = np.zeros(n, np.uint16)
    size, evals = search_from(q, x, links, degs, np.full(n, -1, np.int32), 0, 0,
                               distance(q, x[0], L2), ef, L2, n, visited, 1, beam_d, beam_n, beam_x,
                               buf_n, buf_d)
    truth = np.argsort(((x - q) ** 2).sum(1))[:ef]
    assert size == ef and evals == n - 1
    assert beam_n[:size].tolist() == truth.tolist()
    assert np.all(np.diff(beam_d[:size]) >= 0)


def test_visited_tag_wraps_and_clears():
    visited = np.full(5, 7, np.uint16)
    assert next_tag(visited, 3) == 4 and visited[0] == 7
    assert next_tag(visited, 65535) == 1 and not visited.any()


def test_unreachable_nodes():
    links = np.array([[1, -1], [0, -1], [3, -1], [2, -1]], np.int32)
    deg = np.array([1, 1, 1, 1], np.int32)
    assert unreachable_nodes(links, deg, 0, 4).tolist() == [2, 3]


def test_check_graph_finds_broken_invariants():
    levels = np.zeros(3, np.int8)
    links = np.array([[1, 2], [0, -1], [0, -1]], np.int32)
    deg = np.array([2, 1, 1], np.int32)
    args = (np.full(3, -1, np.int32), np.zeros((0, 2), np.int32), np.zeros(0, np.int32), 3, 0, 0)
    assert check_graph(levels, links, deg, *args)[0] == OK
    bad = links.copy(); bad[0, 1] = 0
    assert check_graph(levels, bad, deg, *args) == (SELF_LOOP, 0)
    bad = links.copy(); bad[0, 1] = 1
    assert check_graph(levels, bad, deg, *args) == (DUPLICATE_LINK, 0)
    bad = links.copy(); bad[2, 0] = 9
    assert check_graph(levels, bad, deg, *args) == (BAD_LINK, 2)


def test_int8_codes_match_numpy_and_keep_orderings():
    from shoal.kernels.quantize import int8_codes, quantize_rows

    x = random_vectors(300, 48, seed=6)
    center = x.mean(0).astype(np.float32)
    want = np.clip(np.rint((x - center) * np.float32(2.5)), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(quantize_rows(x, center, np.float32(2.5)), want)
    for metric in (IP, L2):
        codes = int8_codes(x, metric)
        assert codes.dtype == np.int8 and np.abs(codes).max() == 127
        exact = np.array([distance(x[0], row, metric) for row in x[1:]])
        coded = np.array([distance(codes[0], row, metric) for row in codes[1:]])
        # the 10 nearest by codes are (nearly) the 10 nearest by vectors
        assert len(set(np.argsort(exact)[:10]) & set(np.argsort(coded)[:10])) >= 8


def test_kernels_agree_without_jit():
    """The same kernel tests pass as plain Python (NUMBA_DISABLE_JIT=1): the kernels are the
    algorithm, not an artefact of compilation."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "not without_jit"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
