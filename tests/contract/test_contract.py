"""One suite over every way to reach a collection (``conftest.Backend``): the same methods with
the same parameters, the same typed errors for bad input, each point exactly once in results,
and the same behaviour as a plain-dict model under random sequences of operations."""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

import shoal
from shoal.client import RemoteCollection
from shoal.db.contract import METHODS, CollectionAPI


def implementations():
    out = [shoal.Collection, RemoteCollection]
    try:
        from shoal.ray import ShardedCollection
    except ImportError:  # pragma: no cover - ray is in the test extra
        return out
    return out + [ShardedCollection]


@pytest.mark.parametrize("cls", implementations(), ids=lambda c: c.__name__)
def test_every_implementation_has_every_method_with_the_same_parameters(cls):
    for method in (*METHODS, "__len__"):
        assert hasattr(cls, method), f"{cls.__name__} has no {method}()"
        want = inspect.signature(getattr(CollectionAPI, method)).parameters
        got = inspect.signature(getattr(cls, method)).parameters
        for name, p in want.items():
            assert name in got, f"{cls.__name__}.{method} has no parameter {name!r}"
            q = got[name]
            assert (q.kind, q.default) == (p.kind, p.default), \
                f"{cls.__name__}.{method}({name}) is {q.kind.name}={q.default!r}, the contract says {p.kind.name}={p.default!r}"
        extra = [q for name, q in got.items() if name not in want]
        assert all(q.kind is q.KEYWORD_ONLY and q.default is not q.empty for q in extra), \
            f"{cls.__name__}.{method} adds parameters that are not optional keywords: {extra}"


def vectors(n, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


BAD_CALLS = [
    ("upsert", ([1, 2], vectors(3)), {}, shoal.InvalidArgumentError, "ids has 2 entries"),
    ("upsert", ([1], vectors(1, dim=5)), {}, shoal.DimensionMismatchError, "dim"),
    ("upsert", ([1], np.full((1, 8), np.nan, np.float32)), {}, shoal.InvalidArgumentError, "finite"),
    ("upsert", ([1, 1], vectors(2)), {}, shoal.InvalidArgumentError, "repeated"),
    ("upsert", ([1.5], vectors(1)), {}, shoal.InvalidTypeError, "ids"),
    ("upsert", ([""], vectors(1)), {}, shoal.InvalidArgumentError, "empty"),
    ("upsert", (["x" * 2000], vectors(1)), {}, shoal.InvalidArgumentError, "longer than"),
    ("upsert", ([1], vectors(1), [{"a": float("nan")}]), {}, shoal.InvalidArgumentError, "finite"),
    ("upsert", ([1], vectors(1), ["not a dict"]), {}, shoal.InvalidTypeError, "payloads"),
    ("delete", (), {}, shoal.InvalidArgumentError, "exactly one"),
    ("delete", ([1],), {"filter": {"a": 1}}, shoal.InvalidArgumentError, "exactly one"),
    ("delete", (), {"filter": {"a": {"$bogus": 1}}}, shoal.FilterError, "bogus"),
    ("count", ({"$or": 3},), {}, shoal.FilterError, "or"),
    ("search", (vectors(1)[0],), {"k": 0}, shoal.InvalidArgumentError, "k"),
    ("search", (vectors(1)[0],), {"k": 20000}, shoal.InvalidArgumentError, "k must be <= 10000"),
    ("search", (vectors(1)[0],), {"k": 10, "ef": 5}, shoal.InvalidArgumentError, "ef must be >= k"),
    ("search", (vectors(1, dim=3)[0],), {}, shoal.DimensionMismatchError, "dim"),
    ("search", (vectors(1)[0],), {"filter": {"$and": {}}}, shoal.FilterError, "and"),
    ("get", ("abc",), {}, shoal.InvalidTypeError, "list of ints or strings"),
    ("create_payload_index", (3,), {}, shoal.InvalidTypeError, "field"),
    ("create_payload_index", ("a..b",), {}, shoal.FilterError, "field"),
    ("scan", (0,), {}, shoal.InvalidArgumentError, "batch_size"),
    ("create_payload_index", ("a\x00b",), {}, shoal.FilterError, "NUL"),  # found by the fuzzer
    ("count", ({"a\x00": 1},), {}, shoal.FilterError, "NUL"),
]


def test_bad_input_raises_the_same_typed_errors_and_changes_nothing(backend):
    col = backend.create()
    col.upsert([7], vectors(1, seed=3), [{"a": 1}])
    for method, args, kwargs, exc, match in BAD_CALLS:
        with pytest.raises(exc, match=match):
            result = getattr(col, method)(*args, **kwargs)
            if inspect.isgenerator(result):
                next(result)
    assert col.count() == 1 and col.get([7])[0]["payload"] == {"a": 1}


def test_vectors_on_disk_behave_as_in_ram_everywhere(backend):
    with pytest.raises(TypeError, match="on_disk"):
        backend.create(on_disk="yes")
    col = backend.create(on_disk=True)
    assert col.config["on_disk"] is True  # it reached the collection (the server, the shards)
    x = vectors(60, seed=4)
    col.upsert(list(range(60)), x, [{"i": i} for i in range(60)])
    assert [row[0].id for row in col.search(x, k=1, ef=64)] == list(range(60))
    got = col.get([7, 59])
    np.testing.assert_array_equal(np.stack([g["vector"] for g in got]), x[[7, 59]])
    col.delete([7])
    assert col.count() == 59 and col.get([7]) == [None]


def test_each_point_once_while_it_is_reupserted(backend):
    col = backend.create()
    x = vectors(20, seed=1)
    keys = list(range(10)) + [f"s{i}" for i in range(10)]
    col.upsert(keys, x, [{"g": "a"}] * 20)
    col.upsert(list(range(100, 160)), vectors(60, seed=2) + 20)
    done = threading.Event()
    bad: list = []

    def read():
        while not done.is_set():
            for flt in (None, {"g": "a"}):
                ids = [h.id for h in col.search(x[0], k=30, ef=200, filter=flt)]
                mine = [i for i in ids if i in set(keys)]
                if sorted(map(str, mine)) != sorted(map(str, keys)) or len(ids) != len(set(map(str, ids))):
                    bad.append(ids)
            scanned = [repr(key) for ids, _, _ in col.scan(batch_size=7) for key in ids]
            if sorted(scanned) != sorted(map(repr, keys + list(range(100, 160)))):
                bad.append(("scan", len(scanned), len(set(scanned))))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for r in range(40):
            col.upsert(keys, x, [{"g": "a", "r": r}] * 20)
            if r % 15 == 14:
                col.compact()
    finally:
        done.set()
        reader.join(120)
    assert not bad, f"{len(bad)} searches saw a point twice or not at all: {bad[:3]}"


class ModelMachine(RuleBasedStateMachine):
    """Random operations on a collection and on a dict; they must agree throughout."""

    backend = None

    @initialize()
    def start(self):
        self.col = self.backend.create(dim=4, metric="l2")
        self.model: dict = {}
        self.n = 0

    @rule(keys=st.lists(st.one_of(st.integers(0, 30), st.sampled_from(["a", "b", "c"])), min_size=1,
                        max_size=6, unique_by=lambda k: (type(k), k)),
          tag=st.integers(0, 3))
    def upsert(self, keys, tag):
        self.n += 1
        x = np.random.default_rng(self.n).standard_normal((len(keys), 4)).astype(np.float32)
        self.col.upsert(keys, x, [{"t": tag}] * len(keys))
        for key, v in zip(keys, x):
            self.model[(type(key), key)] = (key, v, {"t": tag})

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_ids(self, data):
        picked = data.draw(st.lists(st.sampled_from(sorted(self.model, key=repr)), min_size=1, max_size=3, unique=True))
        assert self.col.delete([self.model[p][0] for p in picked]) == len(picked)
        for p in picked:
            del self.model[p]

    @rule(tag=st.integers(0, 3))
    def delete_filter(self, tag):
        doomed = [k for k, (_, _, p) in self.model.items() if p["t"] == tag]
        assert self.col.delete(filter={"t": tag}) == len(doomed)
        for k in doomed:
            del self.model[k]

    @rule()
    def compact(self):
        self.col.compact()

    @rule()
    def checkpoint(self):
        self.col.checkpoint()
        self.col.flush()

    @invariant()
    def same_points(self):
        if not hasattr(self, "col"):
            return
        assert self.col.count() == len(self.model) == len(self.col)
        stats = self.col.stats()
        assert stats["name"] == self.col.name and stats["count"] == len(self.model)
        assert self.col.count({"t": 1}) == sum(1 for _, _, p in self.model.values() if p["t"] == 1)
        scanned = {}
        for ids, vecs, pays in self.col.scan(batch_size=7):
            for key, v, p in zip(ids, vecs, pays):
                assert (type(key), key) not in scanned
                scanned[(type(key), key)] = (v, p)
        assert set(scanned) == set(self.model)
        for k, (key, v, p) in self.model.items():
            np.testing.assert_array_equal(scanned[k][0], v)
            assert scanned[k][1] == p
        if self.model:
            key, v, p = next(iter(self.model.values()))
            hits = self.col.search(v, k=len(self.model), ef=200)
            assert len(hits) == len(self.model) and hits[0].distance <= 1e-5
            for h in hits:  # each hit's distance is its own point's (l2)
                stored = self.model[(type(h.id), h.id)][1]
                assert abs(h.distance - float(((stored - v) ** 2).sum())) <= 1e-4
            bare = self.col.search(v, k=len(self.model), ef=200, with_payload=False)
            assert [(h.id, h.distance) for h in bare] == [(h.id, h.distance) for h in hits]
            assert all(h.payload is None for h in bare)
            got = self.col.get([key])[0]
            np.testing.assert_array_equal(got["vector"], v)
            assert got["payload"] == p


def test_the_same_behaviour_as_a_model(backend):
    ModelMachine.backend = backend
    examples = 6 if backend.kind == "sharded" else 15
    run_state_machine_as_test(ModelMachine, settings=settings(
        max_examples=examples, stateful_step_count=12, deadline=None, suppress_health_check=list(HealthCheck)))
