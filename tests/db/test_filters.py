"""Filters compiled to SQLite agree with a plain-Python model; malformed filters are refused."""

import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shoal
from shoal.db.filters import FilterError, compile_filter
from tests.db.filter_model import matches

KEYS = ["a", "b", "c"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from([0.5, 1.0, -2.5]),
                    st.sampled_from(["x", "y", "10", "é", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)), max_leaves=6)
payloads = st.dictionaries(st.sampled_from(KEYS), values, max_size=3)
paths = st.sampled_from(["a", "b", "c", "a.b", "b.c", "a.a"])
comparable = st.one_of(st.integers(-5, 5), st.sampled_from([0.5, -2.5, "x", "10", ""]))
field_ops = st.one_of(
    scalars,
    st.fixed_dictionaries({"$eq": scalars}),
    st.fixed_dictionaries({"$ne": scalars}),
    st.fixed_dictionaries({"$gt": comparable}),
    st.fixed_dictionaries({"$lt": comparable}),
    st.fixed_dictionaries({"$gte": comparable, "$lt": comparable}),
    st.fixed_dictionaries({"$lte": comparable}),
    st.fixed_dictionaries({"$in": st.lists(scalars, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"$nin": st.lists(scalars, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"$exists": st.booleans()}),
)
leaf = st.dictionaries(paths, field_ops, min_size=1, max_size=2)
filters = st.recursive(leaf, lambda inner: st.one_of(
    st.fixed_dictionaries({"$and": st.lists(inner, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"$or": st.lists(inner, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"$not": inner})), max_leaves=5)


def select(rows, flt):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(i, json.dumps(r)) for i, r in enumerate(rows)])
    sql, params = compile_filter(flt)
    return [i for (i,) in db.execute(f"SELECT id FROM t WHERE {sql} ORDER BY id", params)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(payloads, min_size=1, max_size=8), flt=filters)
def test_sqlite_agrees_with_the_model(rows, flt):
    assert select(rows, flt) == [i for i, r in enumerate(rows) if matches(flt, r)]


ROWS = [
    {"lang": "en", "year": 2021, "tags": ["a", "b"], "meta": {"ok": True}},
    {"lang": "fr", "year": 2019, "tags": ["b"], "score": 1},
    {"lang": "en", "year": 2023.0, "meta": {"ok": False}, "score": True},
    {"year": "2020", "lang": None},
]


@pytest.mark.parametrize("flt, want", [
    ({"lang": "en"}, [0, 2]),
    ({"lang": "en", "year": {"$gte": 2022}}, [2]),
    ({"year": {"$gte": 2020, "$lt": 2023}}, [0]),
    ({"year": {"$gt": "2000"}}, [3]),           # strings compare with strings only
    ({"tags": "b"}, [0, 1]),                    # arrays match by element
    ({"tags": {"$in": ["a", "z"]}}, [0]),
    ({"tags": {"$nin": ["a"]}}, [1, 2, 3]),
    ({"meta.ok": True}, [0]),
    ({"score": 1}, [1]),                        # true is not 1
    ({"score": True}, [2]),
    ({"lang": None}, [3]),
    ({"lang": {"$ne": "en"}}, [1, 3]),
    ({"lang": {"$exists": True}}, [0, 1, 2, 3]),  # null counts as present
    ({"score": {"$exists": False}}, [0, 3]),
    ({"$or": [{"lang": "fr"}, {"year": 2023}]}, [1, 2]),
    ({"$not": {"lang": "en"}}, [1, 3]),
    ({"$and": [{"lang": "en"}, {"$not": {"meta.ok": False}}]}, [0]),
    ({}, [0, 1, 2, 3]),
])
def test_documented_examples(flt, want):
    assert select(ROWS, flt) == want


@pytest.mark.parametrize("flt, match", [
    ([], "must be an object"),
    ({"$and": {}}, r"\$and: expected a non-empty list"),
    ({"$or": []}, "non-empty list"),
    ({"$xor": [{}]}, "unknown operator '\\$xor'"),
    ({"a": {"$regex": "x"}}, r"filter\.a\.\$regex: unknown operator"),
    ({"a": {"$in": "x"}}, "non-empty list"),
    ({"a": {"$gt": True}}, "number or a string"),
    ({"a": {"$gt": None}}, "number or a string"),
    ({"a": {"$exists": 1}}, "true or false"),
    ({"a": [1, 2]}, "string, number, boolean or null"),
    ({"a": float("nan")}, "finite"),
    ({"a": 2**70}, "64 bits"),
    ({"a..b": 1}, "empty key"),
    ({'a"b': 1}, "may not contain"),
    ({1: 2}, "keys must be strings"),
])
def test_malformed_filters(flt, match):
    with pytest.raises(FilterError, match=match):
        compile_filter(flt)
    with pytest.raises(ValueError):
        compile_filter(flt)
    assert issubclass(FilterError, shoal.ShoalError)


def test_deep_nesting_is_refused():
    flt = {"a": 1}
    for _ in range(40):
        flt = {"$not": flt}
    with pytest.raises(FilterError, match="nested more than"):
        compile_filter(flt)


INDEXED = ["a", "b", "c", "a.b", "b.c", "a.a"]  # every path the generated filters use


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(payloads, min_size=1, max_size=8), flt=filters)
def test_payload_indexes_agree_with_the_model(rows, flt):
    """The same filters, every field indexed: conditions read field_index instead of JSON."""
    import tempfile

    import numpy as np

    from shoal.db.payloads import PayloadStore, encode_payloads

    with tempfile.TemporaryDirectory() as tmp:
        store = PayloadStore(tmp + "/p.sqlite")
        for field in INDEXED[:3]:  # some fields indexed before the rows arrive, some after
            store.create_index(field)
        store.upsert(list(range(len(rows))), np.arange(len(rows)), encode_payloads(rows, len(rows)), 1)
        for field in INDEXED[3:]:
            store.create_index(field)
        try:
            assert store.uids_where(flt).tolist() == [i for i, r in enumerate(rows) if matches(flt, r)]
            # replace every row: the old versions are retired (readable until purged), and a
            # filter over every version reads the retired table through the same indexes
            n = len(rows)
            store.upsert(list(range(n)), np.arange(n, 2 * n), encode_payloads(rows[::-1], n), 2)
            versions = rows + rows[::-1]
            assert store.uids_where(flt, retired=True).tolist() == \
                [i for i, r in enumerate(versions) if matches(flt, r)]
        finally:
            store.close()


@pytest.mark.parametrize("indexed", [False, True], ids=["json", "indexed"])
@pytest.mark.parametrize("op, bound, want", [
    ("$gt", 2, [3, 4]), ("$gte", 2, [2, 3, 4]), ("$lt", 2, [0, 1]), ("$lte", 2, [0, 1, 2]),
    ("$gt", 2.0, [3, 4]), ("$gte", 2.0, [2, 3, 4]), ("$lt", 1.5, [0, 1]), ("$lte", 1.0, [0, 1]),
    ("$gt", "b", []), ("$gte", "b", [5]), ("$lt", "b", [4]), ("$lte", "b", [4, 5]),
])
def test_comparison_boundaries(tmp_path, indexed, op, bound, want):
    import numpy as np

    from shoal.db.payloads import PayloadStore, encode_payloads

    rows = [{"v": 0}, {"v": 1.0}, {"v": 2}, {"v": 3}, {"v": [4, "a"]}, {"v": "b"}]
    store = PayloadStore(str(tmp_path / "p.sqlite"))
    if indexed:
        store.create_index("v")
    store.upsert(list(range(len(rows))), np.arange(len(rows)), encode_payloads(rows, len(rows)), 1)
    got = store.uids_where({"v": {op: bound}}).tolist()
    store.close()
    assert got == want == [i for i, r in enumerate(rows) if matches({"v": {op: bound}}, r)]
