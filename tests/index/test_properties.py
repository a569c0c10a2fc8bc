"""hypothesis: invariants of add and search on small random data."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shoal

batches = st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=batches, dim=st.integers(2, 12), m=st.integers(2, 8),
       metric=st.sampled_from(["l2", "ip", "cosine"]), seed=st.integers(0, 2**16),
       k=st.integers(1, 12))
def test_add_search_invariants(sizes, dim, m, metric, seed, k):
    rng = np.random.default_rng(seed)
    index = shoal.Index(dim, metric, m=m, ef_construction=16, seed=seed)
    ids = rng.choice(10**12, size=sum(sizes), replace=False)
    data = rng.standard_normal((sum(sizes), dim)).astype(np.float32)
    pos = 0
    for size in sizes:
        assert index.add(data[pos:pos + size], ids=ids[pos:pos + size]).tolist() == ids[pos:pos + size].tolist()
        pos += size
    n = len(index)
    assert n == sum(sizes)
    index.check_integrity(reachable=True)
    # With ef >= n every reachable node enters the beam: the search is exact.
    q = rng.standard_normal((5, dim)).astype(np.float32)
    labels, dist = index.search(q, k, ef=max(n, k))
    stored = index.get(ids)
    qq = q / np.linalg.norm(q, axis=1, keepdims=True) if metric == "cosine" else q
    exact = ((qq[:, None] - stored[None]) ** 2).sum(-1) if metric == "l2" else 1 - qq @ stored.T
    for row in range(len(q)):
        want = np.sort(exact[row])[: min(k, n)]
        np.testing.assert_allclose(dist[row, : min(k, n)], want, rtol=1e-4, atol=1e-4)
        assert set(labels[row, : min(k, n)]) <= set(ids.tolist())
        assert (labels[row, n:] == -1).all() and np.isinf(dist[row, n:]).all()
