"""Search on SQ8 codes and the calibrated default beam: codes against a NumPy reference, codes
that follow the data through adds, saves and memory maps, recall against brute force, and the
default ``ef`` that must reach recall@10 0.95 without being told."""

import numpy as np
import pytest

import shoal
from shoal.datasets import recall_at_k
from shoal.errors import CorruptIndexError, InvalidArgumentError
from shoal.exact import exact_top_k
from shoal.kernels.distance import IP, L2, distance
from shoal.kernels.quantize import column_ranges, encode_sq8, prepare_query, sq8_params
from shoal.storage import format as fmt
from tests.conftest import random_vectors


def reference_codes(x, lo, step):
    return np.clip(np.rint((x - lo) / step), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("metric", [IP, L2])
def test_sq8_codes_and_prepared_queries_match_numpy(metric):
    x = random_vectors(400, 40, seed=3) * np.linspace(0.1, 3.0, 40, dtype=np.float32)
    lo, hi = column_ranges(x)
    np.testing.assert_array_equal(lo, x.min(0))
    np.testing.assert_array_equal(hi, x.max(0))
    lo, step = sq8_params(lo, hi, metric, margin=0.0)
    if metric == L2:
        assert np.unique(step).size == 1  # one step for every column: distances stay a sum
    codes = encode_sq8(x, lo, step)
    want = reference_codes(x, lo, step)
    assert np.abs(codes.astype(int) - want).max() <= 1  # rint of a product vs a quotient
    assert (codes == want).mean() > 0.99
    decoded = lo + step * codes.astype(np.float32)
    assert np.abs(decoded - x).max() <= step.max() * 0.51
    q = random_vectors(1, 40, seed=4)[0]
    w = np.empty_like(q)
    prepare_query(q, lo, step, metric, w)
    coded = np.array([distance(w, c, metric) for c in codes])
    exact = np.array([distance(q, r, metric) for r in decoded])
    # the prepared query's distance to a code is the distance to the decoded row, up to a
    # shift (inner product) or a scale (l2) that is the same for every row
    if metric == IP:
        np.testing.assert_allclose(coded - exact, np.full(len(x), (coded - exact)[0]), atol=1e-3)
    else:
        np.testing.assert_allclose(coded * step[0] ** 2, exact, rtol=1e-4, atol=1e-4)


def codes_agree(index):
    g = index.view()
    np.testing.assert_array_equal(g.codes[: g.count], encode_sq8(g.vectors[: g.count], g.code_lo, g.code_step))
    decoded = g.code_lo + g.code_step * g.codes[: g.count].astype(np.float32)
    assert np.abs(decoded - g.vectors[: g.count]).max() <= g.code_step.max() * 0.51  # none clipped


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_codes_follow_adds_whose_range_grows(metric):
    index = shoal.Index(24, metric, m=8, ef_construction=32)
    small = random_vectors(200, 24, seed=1) * 0.1
    index.add(small)
    codes_agree(index)
    before = index.view()
    wide = random_vectors(300, 24, seed=2) * (1.0 if metric == "cosine" else 10.0)
    wide[:, 0] += 5  # one column far outside the first batch's range
    index.add(wide)
    codes_agree(index)
    after = index.view()
    assert after.codes is not before.codes  # coded again into a new array: old views stay whole
    np.testing.assert_array_equal(before.codes[:200], encode_sq8(before.vectors[:200], before.code_lo,
                                                                  before.code_step))
    index.add(small[:50] * 1.01)  # inside the range: appended, the others not coded again
    np.testing.assert_array_equal(index.view().code_lo, after.code_lo)
    np.testing.assert_array_equal(index.view().codes[:500], after.codes[:500])
    codes_agree(index)
    exact = shoal.Index(24, metric, m=8, ef_construction=32, quantize=None)
    exact.add(np.concatenate([small, wide, small[:50] * 1.01]))
    q = random_vectors(40, 24, seed=9)
    a_ids, a_d = index.search(q, 10, ef=200)
    b_ids, b_d = exact.search(q, 10, ef=200)
    assert recall_at_k(a_ids, b_ids) >= 0.99
    np.testing.assert_allclose(a_d[:, 0], b_d[:, 0], rtol=1e-5, atol=1e-5)  # exact distances


def test_quantized_recall_matches_float_search(built10k, wordnet10k):
    plain = shoal.Index(384, m=16, ef_construction=64, quantize=None)
    plain.add(wordnet10k.base)
    for ef in (24, 64):
        coded, d = built10k.search(wordnet10k.queries, 10, ef=ef)
        flat, _ = plain.search(wordnet10k.queries, 10, ef=ef)
        assert recall_at_k(coded, wordnet10k.gt) >= recall_at_k(flat, wordnet10k.gt) - 0.01
    q = wordnet10k.queries / np.linalg.norm(wordnet10k.queries, axis=1, keepdims=True)
    exact = 1 - np.einsum("ij,ikj->ik", q, built10k.get(coded.ravel()).reshape(*coded.shape, -1))
    np.testing.assert_allclose(d, exact, atol=1e-5)  # ranked and reported by the float32 rows
    assert built10k.stats()["code_bytes"] >= 10_000 * 384


def test_codes_round_trip_and_memory_map(tmp_path, wordnet10k):
    index = shoal.Index(384, m=8, ef_construction=32)
    index.add(wordnet10k.base[:3000])
    path = tmp_path / "a.shoal"
    index.save(path)
    for mmap in (False, True):
        loaded = shoal.Index.load(path, mmap=mmap)
        np.testing.assert_array_equal(loaded.view().codes[:3000], index.view().codes[:3000])
        assert loaded.calibration == index.calibration and loaded.default_ef == index.default_ef
        ef = index.default_ef  # (a search with the default would make each learn its queries)
        for a, b in zip(index.search(wordnet10k.queries, 10, ef=ef), loaded.search(wordnet10k.queries, 10, ef=ef)):
            np.testing.assert_array_equal(a, b)
        loaded.add(wordnet10k.base[3000:3500] * 3)  # wider range after a load: re-coded
        codes_agree(loaded)


def test_format_1_files_load_with_codes_computed(tmp_path, monkeypatch, wordnet10k):
    index = shoal.Index(384, m=8, ef_construction=32)
    index.add(wordnet10k.base[:2000])
    header = {k: v for k, v in index._header().items() if k not in ("quantize", "calibration")}
    sections = {k: v for k, v in index._sections().items() if k in fmt.SECTIONS}
    monkeypatch.setattr(fmt, "VERSION", 1)
    fmt.write_index(tmp_path / "old.shoal", header, sections)
    monkeypatch.undo()
    old = shoal.Index.load(tmp_path / "old.shoal")
    assert old.quantize == "sq8" and old.calibration is None
    codes_agree(old)
    for a, b in zip(index.search(wordnet10k.queries, 10, ef=40), old.search(wordnet10k.queries, 10, ef=40)):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(fmt, "VERSION", 4)
    fmt.write_index(tmp_path / "new.shoal", index._header(), index._sections())
    monkeypatch.undo()
    with pytest.raises(CorruptIndexError, match="format version 4 is not supported"):
        shoal.Index.load(tmp_path / "new.shoal")


def test_unquantized_index_has_no_codes_and_saves_without_them(tmp_path):
    index = shoal.Index(16, quantize=None)
    index.add(random_vectors(300, 16))
    assert index.view().codes.shape[0] == 0 and index.stats()["code_bytes"] == 0
    index.save(tmp_path / "p.shoal")
    loaded = shoal.Index.load(tmp_path / "p.shoal")
    assert loaded.quantize is None and loaded.view().codes.shape[0] == 0
    with pytest.raises(InvalidArgumentError, match="quantize"):
        shoal.Index(16, quantize="pq")


def test_default_ef_is_calibrated_to_reach_095(wordnet10k):
    index = shoal.Index(384, seed=0)  # its own: a shared index learns its queries
    index.add(wordnet10k.base)
    found, _ = index.search(wordnet10k.queries, 10)  # no ef: the calibrated default
    cal = index.calibration
    assert cal is not None and cal["count"] == 10_000 and cal["default_ef"] in cal["efs"]
    assert cal["source"] == "rows" and cal["efs"][-1] == cal["default_ef"]  # measured up to it
    assert cal["recall"][cal["efs"].index(cal["default_ef"])] >= 0.95
    assert recall_at_k(found, wordnet10k.gt) >= 0.95
    # (calibrate=False: the queries just searched would make it calibrate again, on them)
    assert index.ef_for(10, calibrate=False) == cal["default_ef"]
    assert index.ef_for(50, calibrate=False) == 5 * cal["default_ef"]
    assert index.ef_for(10, recall=0.99, calibrate=False) >= cal["default_ef"]
    hi, _ = index.search(wordnet10k.queries, 10, recall=0.99)
    assert recall_at_k(hi, wordnet10k.gt) >= 0.98


def test_default_learns_from_the_queries_it_is_asked(wordnet10k):
    """Rows in clusters of near-duplicates (one text chunked five ways) are easy queries for
    each other, so a default calibrated on rows is far too small for real questions; once the
    index has been searched enough, the queries it was asked replace the rows."""
    rng = np.random.default_rng(0)
    rows = np.repeat(wordnet10k.base[:2000], 5, axis=0)
    rows = rows + rng.normal(0, 0.1 / np.sqrt(384), rows.shape).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    traffic, held_out = wordnet10k.queries[0::2], wordnet10k.queries[1::2]
    truth, _ = exact_top_k(held_out, rows, 10, IP)
    index = shoal.Index(384)
    index.add(rows)
    by_rows = index.calibrate()
    assert by_rows["source"] == "rows"
    index.search(traffic[:60], 10, ef=16)
    index.search(traffic[60], 10, ef=16)  # one 1-D query counts too
    assert index.ef_for(10) == by_rows["default_ef"]  # 61 queries: not enough yet
    index.search(traffic[61:], 10, ef=16)
    assert len(index.recent_queries()) == min(len(traffic), shoal.index.QUERY_MEMORY)
    np.testing.assert_allclose(index.recent_queries()[-1], traffic[-1] / np.linalg.norm(traffic[-1]), rtol=1e-6)
    found, _ = index.search(held_out, 10)  # no ef: calibrated again, on the queries seen
    cal = index.calibration
    assert cal["source"] == "queries" and cal["default_ef"] > by_rows["default_ef"]
    assert recall_at_k(found, truth) >= 0.93, cal
    # the failure this guards: the rows' default on these questions
    assert recall_at_k(index.search(held_out, 10, ef=by_rows["default_ef"])[0], truth) < 0.9
    # an explicit calibration on rows stays until the index grows (observed=False)
    assert index.calibrate(observed=False)["source"] == "rows"
    index.search(held_out, 10, recall=0.99)  # beyond what was measured: measured now
    assert index.calibration["efs"][-1] > by_rows["efs"][-1]


def test_calibration_with_held_out_queries_and_bad_arguments(wordnet10k):
    index = shoal.Index(384)
    index.add(wordnet10k.base[:5000])
    cal = index.calibrate(wordnet10k.queries[:200], target=0.9)
    assert cal["target"] == 0.9 and len(cal["efs"]) == len(cal["recall"])
    assert cal["recall"][cal["efs"].index(cal["default_ef"])] >= 0.9
    with pytest.raises(InvalidArgumentError, match="ef or recall"):
        index.search(wordnet10k.queries[:2], 10, ef=20, recall=0.9)
    for bad in (0, 1.5, "high", True):
        with pytest.raises(InvalidArgumentError, match="recall"):
            index.search(wordnet10k.queries[:2], 10, recall=bad)
    with pytest.raises(InvalidArgumentError, match="target"):
        index.calibrate(target=0)
    tiny = shoal.Index(8)
    tiny.add(random_vectors(5, 8))
    with pytest.raises(InvalidArgumentError, match="more than k"):
        tiny.calibrate()
    assert tiny.search(random_vectors(1, 8)[0], 3)[0].shape == (3,)  # small: DEFAULT_EF


@pytest.mark.parametrize("which", ["wordnet_full", "pkg_full"])
def test_default_search_reaches_095_on_both_real_sets(which, request):
    """One set of defaults, two domains: recall@10 >= 0.95 with no ef on held-out queries."""
    ds = request.getfixturevalue(which)
    index = shoal.Index(ds.base.shape[1])
    index.add(ds.base)
    found, _ = index.search(ds.queries, 10)
    assert recall_at_k(found, ds.gt) >= 0.95, index.calibration
    found, _ = index.search(ds.queries, 10, recall=0.99)
    assert recall_at_k(found, ds.gt) >= 0.98
