"""The payload store against a plain dict model, and its input checks."""

import sqlite3

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal.db.payloads import PayloadStore, check_keys, encode_payloads
from tests.db.filter_model import matches


@pytest.fixture
def store(tmp_path):
    s = PayloadStore(str(tmp_path / "p.sqlite"))
    yield s
    s.close()


def test_upsert_get_delete(store):
    keys = [1, "1", "doc-a", 2**62]
    old = store.upsert(keys, np.arange(4), encode_payloads([{"a": 1}, None, {"t": ["x"]}, {"a": 2}], 4))
    assert old.tolist() == [-1, -1, -1, -1]
    assert store.get([1, "1", 3]) == [(0, {"a": 1}), (1, {}), None]   # 1 and "1" are different keys
    assert store.upsert([1], np.array([10]), encode_payloads([{"a": 9}], 1)).tolist() == [0]
    assert store.get([1]) == [(10, {"a": 9})]
    assert store.upsert([1], np.array([10]), encode_payloads([{"a": 9}], 1)).tolist() == [-1]  # replay
    assert store.keys_of(np.array([10, 0, 2])) == {10: (1, {"a": 9}), 2: ("doc-a", {"t": ["x"]})}
    assert store.keys_of(np.array([10]), payloads=False) == {10: (1, None)}
    assert store.uids_where({"a": {"$gte": 2}}).tolist() == [3, 10]
    assert store.count() == 4 and store.count({"t": "x"}) == 1
    assert store.delete(["doc-a", "missing"]).tolist() == [2]
    doomed = store.uids_where({"a": 9}, for_write=True)   # how a delete by filter runs
    assert doomed.tolist() == [10]
    store.delete_uids(doomed)
    assert store.uids_where().tolist() == [1, 3]


def test_persists_and_opens_read_only(tmp_path):
    path = str(tmp_path / "p.sqlite")
    s = PayloadStore(path)
    s.upsert(["k"], np.array([5]), ['{"x":1}'])
    s.close()
    ro = PayloadStore(path, read_only=True)
    assert ro.get(["k"]) == [(5, {"x": 1})]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.upsert(["j"], np.array([6]), ["{}"])
    ro.close()


def test_many_keys_in_one_call(store):
    keys = list(range(3000))
    store.upsert(keys, np.arange(3000), ["{}"] * 3000)
    assert (store.uids_of(keys) == np.arange(3000)).all()


@pytest.mark.parametrize("keys, exc, match", [
    ("abc", TypeError, "list of ints or strings"),
    ([1, True], TypeError, r"ids\[1\] must be an int or a string"),
    ([1.5], TypeError, "int or a string"),
    ([""], ValueError, "empty string"),
    ([2**64], ValueError, "int64"),
    ([1, 2, 1], ValueError, r"repeated: \[1\]"),
])
def test_bad_keys(keys, exc, match):
    with pytest.raises(exc, match=match):
        check_keys(keys)


def test_good_keys():
    assert check_keys(np.array([3, 4], np.int64)) == [3, 4]
    assert check_keys([1, "1"]) == [1, "1"]


@pytest.mark.parametrize("payloads, exc, match", [
    ({"a": 1}, TypeError, "list of JSON objects"),
    ([{"a": 1}], ValueError, "1 entries but there are 2"),
    ([{"a": 1}, [1]], TypeError, r"payloads\[1\] must be a JSON object"),
    ([{"a": float("nan")}, None], ValueError, "finite"),
    ([{"a": {1: 2}}, None], TypeError, "keys must be strings"),
    ([{"a": {1, 2}}, None], TypeError, "not JSON"),
])
def test_bad_payloads(payloads, exc, match):
    with pytest.raises(exc, match=match):
        encode_payloads(payloads, 2)


keys_st = st.one_of(st.integers(0, 6), st.sampled_from(["a", "b", "c"]))
payload_st = st.dictionaries(st.sampled_from(["x", "y"]), st.one_of(st.integers(0, 3), st.sampled_from(["p", "q"])), max_size=2)


class StoreMachine(RuleBasedStateMachine):
    """Random upserts and deletes keep the store equal to a dict model."""

    def __init__(self):
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.store = PayloadStore(self.dir.name + "/p.sqlite")
        self.model = {}
        self.next_uid = 0

    @rule(batch=st.dictionaries(keys_st, payload_st, min_size=1, max_size=4))
    def upsert(self, batch):
        keys = list(batch)
        uids = np.arange(self.next_uid, self.next_uid + len(keys))
        self.next_uid += len(keys)
        old = self.store.upsert(keys, uids, encode_payloads(list(batch.values()), len(keys)))
        for key, uid, o in zip(keys, uids, old):
            assert o == (self.model[(type(key), key)][0] if (type(key), key) in self.model else -1)
            self.model[(type(key), key)] = (int(uid), batch[key])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        key = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        assert self.store.delete([key[1]]).tolist() == [self.model.pop(key)[0]]

    @rule(flt=st.dictionaries(st.sampled_from(["x", "y"]), st.one_of(st.integers(0, 3), st.sampled_from(["p", "q"])), max_size=1))
    def select(self, flt):
        want = sorted(uid for uid, p in self.model.values() if matches(flt, p))
        assert self.store.uids_where(flt).tolist() == want

    @invariant()
    def same_contents(self):
        assert self.store.count() == len(self.model)
        keys = [k for _, k in self.model]
        assert self.store.get(keys) == [self.model[(type(k), k)] for k in keys]

    def teardown(self):
        self.store.close()
        self.dir.cleanup()


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=40, stateful_step_count=15, deadline=None)


from hypothesis import HealthCheck, given  # noqa: E402

from tests.db.test_filters import filters, payloads as payload_rows  # noqa: E402

INDEXABLE = ["a", "b", "c", "a.b", "b.c", "a.a"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rows=st.lists(payload_rows, min_size=1, max_size=8), flt=filters,
       fields=st.sets(st.sampled_from(INDEXABLE)), early=st.booleans(), data=st.data())
def test_payload_indexes_select_the_same_rows(tmp_path_factory, rows, flt, fields, early, data):
    """With indexes on any fields, created before or after the rows, and kept up through
    replacements and deletes, a filter selects exactly what the model says."""
    store = PayloadStore(str(tmp_path_factory.mktemp("ix") / "p.sqlite"))
    if early:
        for f in fields:
            store.create_index(f)
    keys = list(range(len(rows)))
    store.upsert(keys, np.arange(len(rows)), encode_payloads(rows, len(rows)))
    if not early:
        for f in fields:
            store.create_index(f)
    model = dict(enumerate(rows))
    uid_of = {k: k for k in keys}
    if len(rows) > 1:  # replace one row's payload and delete another
        k = data.draw(st.sampled_from(keys))
        new = data.draw(payload_rows)
        store.upsert([k], np.array([100 + k]), encode_payloads([new], 1))
        model[k], uid_of[k] = new, 100 + k
        gone = data.draw(st.sampled_from([x for x in keys if x != k]))
        store.delete([gone])
        del model[gone]
    want = sorted(uid_of[k] for k, p in model.items() if matches(flt, p))
    assert store.uids_where(flt).tolist() == want
    assert store.count(flt) == len(want)
    store.close()


def test_an_indexed_filter_reads_the_index(store):
    store.create_index("year")
    store.upsert(list(range(50)), np.arange(50), encode_payloads([{"year": 2000 + i} for i in range(50)], 50))
    from shoal.db.filters import compile_filter

    sql, params = compile_filter({"year": {"$gte": 2040}}, indexed=store.indexed)
    plan = " ".join(str(r) for r in store._db.execute(f"EXPLAIN QUERY PLAN SELECT uid FROM points WHERE {sql}", params))
    assert "field_index_value" in plan
    assert store.uids_where({"year": {"$gte": 2040}}).tolist() == list(range(40, 50))
    with pytest.raises(ValueError, match="empty key"):
        store.create_index("a..b")
    with pytest.raises(TypeError):
        store.create_index(3)


def test_payloads_with_integers_beyond_64_bits_round_trip(store):
    big = {"n": 2**70 + 1, "neg": -(2**65) - 3, "f": 1.5, "s": "é"}
    store.upsert(["k"], np.array([1]), encode_payloads([big], 1))
    assert store.get(["k"]) == [(1, big)]
    assert store.keys_of(np.array([1])) == {1: ("k", big)}
