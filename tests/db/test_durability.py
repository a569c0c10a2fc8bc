"""Crash safety with real processes, a state machine against a model, and concurrent readers."""

import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import shoal
from tests.db.checks import race

BATCH = 10


def batch_vectors(b, dim=16):
    return np.random.default_rng(b).standard_normal((BATCH, dim)).astype(np.float32)


WRITER = r"""
import sys, numpy as np, shoal
# small thresholds, so that crashes also hit checkpoints, seals and automatic compactions
policy = shoal.Policy(seal_rows=120, checkpoint_min_rows=50, compact_min_rows=60)
path, start = sys.argv[1], int(sys.argv[2])
db = shoal.open(path, policy=policy)
col = db.get_collection("c") if "c" in db.list_collections() else db.create_collection("c", dim=16, metric="cosine")
b = start
while True:
    x = np.random.default_rng(b).standard_normal((10, 16)).astype(np.float32)
    col.upsert([b * 10 + i for i in range(10)], x, [{"b": b, "i": i} for i in range(10)])
    # acknowledged: in the fsynced log (one write call: with PYTHONUNBUFFERED, print writes
    # each piece apart and a kill between them left a line cut short)
    sys.stdout.write(f"U {b}\n"); sys.stdout.flush()
    if b % 3 == 0 and b >= 2:
        col.delete(ids=[(b - 2) * 10 + i for i in range(10)])
        sys.stdout.write(f"D {b - 2}\n"); sys.stdout.flush()
    b += 1
"""


def check_batch(col, b, expect_present):
    """Check batch b is wholly present (with its data) or wholly absent; returns which."""
    got = col.get([b * 10 + i for i in range(BATCH)])
    present = [g is not None for g in got]
    if expect_present is None:  # in flight when killed: all or nothing
        assert all(present) or not any(present), (b, present)
        expect_present = present[0]
    assert all(p == expect_present for p in present), (b, present)
    if expect_present:
        x = batch_vectors(b)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for i, g in enumerate(got):
            assert g["payload"] == {"b": b, "i": i}
            np.testing.assert_allclose(g["vector"], x[i], rtol=1e-5, atol=1e-6)
    return expect_present


def test_acknowledged_writes_survive_sigkill(tmp_path):
    path = str(tmp_path / "db")
    rng = random.Random(3)
    present: dict[int, bool] = {}
    next_batch = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, path, str(next_batch)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.8, 2.0))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err[-2000:]
        in_flight = set()
        last_u = next_batch - 1
        for line in out.splitlines():
            op, b = line.split()
            present[int(b)] = op == "U"
            last_u = max(last_u, int(b)) if op == "U" else last_u
        # what the writer was doing when it died: the next upsert, or the delete after last_u
        in_flight.add(last_u + 1)
        if last_u % 3 == 0 and last_u >= 2 and out.splitlines() and out.splitlines()[-1].startswith("U"):
            in_flight.add(last_u - 2)
        with shoal.open(path) as db:
            if "c" not in db.list_collections():
                continue
            col = db.get_collection("c")
            for b in sorted(set(present) | in_flight):
                seen = check_batch(col, b, None if b in in_flight else present[b])
                if b in in_flight:  # either outcome is right; the next rounds expect what landed
                    present[b] = seen
            live = [b for b, p in present.items() if p and b not in in_flight]
            if live:
                b = live[-1]
                hit = col.search(batch_vectors(b)[3], k=1, ef=64)[0]
                assert hit.id == b * 10 + 3
        next_batch = last_u + 1
    assert sum(present.values()) > 10  # the writer got real work done between kills


class CollectionMachine(RuleBasedStateMachine):
    """Upsert / delete / compact / reopen / search against a plain dict model."""

    SMALL = shoal.Policy(seal_rows=12, checkpoint_min_rows=5, compact_min_rows=10)

    def __init__(self):
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.db = shoal.open(self.dir.name, policy=self.SMALL)
        self.col = self.db.create_collection("m", dim=4, metric="l2")
        self.model: dict = {}

    @rule(ids=st.lists(st.one_of(st.integers(0, 30), st.sampled_from(["a", "b", "c"])), min_size=1,
                       max_size=8, unique=True), seed=st.integers(0, 10**6))
    def upsert(self, ids, seed):
        x = np.random.default_rng(seed).standard_normal((len(ids), 4)).astype(np.float32)
        self.col.upsert(ids, x, [{"k": str(i)} for i in ids])
        for i, row in zip(ids, x):
            self.model[i] = row

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        keys = data.draw(st.lists(st.sampled_from(sorted(self.model, key=repr)), min_size=1, max_size=3, unique=True))
        assert self.col.delete(ids=keys + ["never-there"]) == len(keys)
        for key in keys:
            del self.model[key]

    @rule(key=st.sampled_from(["a", "b", "c"]))
    def delete_by_filter(self, key):
        n = self.col.delete(filter={"k": key}) if key in self.model else 0
        assert n == (1 if self.model.pop(key, None) is not None else 0)

    @rule()
    def compact(self):
        self.col.compact()

    @rule()
    def reopen(self):
        self.db.close()
        self.db = shoal.open(self.dir.name, policy=self.SMALL)
        self.col = self.db.get_collection("m")

    @rule(seed=st.integers(0, 10**6), k=st.integers(1, 6))
    def search(self, seed, k):
        q = np.random.default_rng(seed).standard_normal(4).astype(np.float32)
        hits = self.col.search(q, k=k, ef=64)
        keys = list(self.model)
        d = np.array([((self.model[key] - q) ** 2).sum() for key in keys])
        want = sorted(d)[:k]
        np.testing.assert_allclose([h.distance for h in hits], want, rtol=1e-4, atol=1e-5)
        for h in hits:
            np.testing.assert_allclose(((self.model[h.id] - q) ** 2).sum(), h.distance, rtol=1e-4, atol=1e-5)

    @invariant()
    def same_contents(self):
        assert self.col.count() == len(self.model)
        keys = list(self.model)
        for key, got in zip(keys, self.col.get(keys)):
            np.testing.assert_array_equal(got["vector"], self.model[key])
            assert got["payload"] == {"k": str(key)}

    def teardown(self):
        self.db.close()
        self.dir.cleanup()


TestCollectionMachine = CollectionMachine.TestCase
TestCollectionMachine.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)


def test_readers_see_whole_batches_while_a_writer_upserts_and_compacts(tmp_path):
    """Each batch is 20 copies of one vector; a reader searching for it finds all 20 or none."""
    db = shoal.open(tmp_path / "db", policy=shoal.Policy(seal_rows=100, checkpoint_min_rows=50))
    col = db.create_collection("c", dim=8, metric="l2")
    vecs = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32) * 10

    def write():
        for b in range(40):
            col.upsert([b * 100 + i for i in range(20)], np.repeat(vecs[b:b + 1], 20, 0))
            if b % 10 == 9:
                col.compact()

    def read(done):
        rng = np.random.default_rng(threading.get_ident() % 1000)
        while not done.is_set():
            b = int(rng.integers(0, 40))
            hits = col.search(vecs[b], k=25, ef=200)
            same = [h for h in hits if h.id // 100 == b]
            assert len(same) in (0, 20), (b, len(same))

    errors = race(write, read, readers=3, timeout=120)
    db.close()
    assert not errors, errors[:3]
