"""Exactly-once results: a search sees every point once, as its old version or its new one,
while a writer re-upserts, deletes, checkpoints, seals and compacts in another thread."""

import time

import numpy as np
import pytest

import shoal
from shoal.db.policy import Policy
from tests.db.checks import race

TINY = Policy(seal_rows=150, checkpoint_min_rows=60, compact_min_rows=40)
#: Seals every few rounds and never compacts by itself (the writer compacts explicitly).
SEALING = Policy(seal_rows=150, checkpoint_min_rows=60, compact_min_rows=10**9)


def let_the_writer_on():
    """A reader that never waits takes the GIL back each time the writer gives it up for I/O
    and holds it for a switch interval (a convoy that makes each write take seconds): give it
    up between searches."""
    time.sleep(0)


def _keys(string_ids):
    return [f"p{i}" for i in range(20)] if string_ids else list(range(20))


@pytest.mark.parametrize("payloads", [False, True], ids=["no-payloads", "payloads"])
@pytest.mark.parametrize("string_ids", [False, True], ids=["int-ids", "str-ids"])
@pytest.mark.parametrize("use_filter", [False, True], ids=["no-filter", "filter"])
def test_readers_see_each_point_once_while_it_is_reupserted(tmp_path, payloads, string_ids, use_filter):
    db = shoal.open(tmp_path / "db", policy=SEALING)
    col = db.create_collection("c", dim=8, metric="l2")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    keys = _keys(string_ids)
    col.upsert(keys, x, [{"g": "a", "v": 0} for _ in keys] if payloads else None)
    col.upsert(list(range(1000, 1100)), rng.standard_normal((100, 8)).astype(np.float32) + 50)
    flt = {"g": "a"} if use_filter else None
    if use_filter and not payloads:
        col.upsert(keys, x, [{"g": "a"} for _ in keys])
    bad: list[tuple] = []
    segments: set[int] = set()

    def write():
        for r in range(300):
            col.upsert(keys, x, [{"g": "a", "v": r} for _ in keys] if payloads or use_filter else None)
            segments.add(len(col.stats()["segments"]))
            if r % 60 == 59:
                col.checkpoint()
            if r % 100 == 99:
                col.compact()

    def read(done):
        while not done.is_set():
            hits = col.search(x[3], k=25, ef=200, filter=flt, with_payload=payloads)
            got = sorted(map(str, (h.id for h in hits if h.id in set(keys))))
            if got != sorted(map(str, keys)):
                bad.append((len(got), len(set(got))))
            found = col.get(keys[:5], with_vector=True)
            if any(f is None or f["vector"] is None for f in found):
                bad.append(("get", [f is None or f["vector"] is None for f in found]))
            let_the_writer_on()

    errors = race(write, read)
    assert not errors, errors[:3]
    assert not bad, f"{len(bad)} searches saw a point twice or not at all, e.g. {bad[:5]}"
    assert max(segments) >= 3  # sealed segments came and went with the compactions
    assert col.count() == 120
    db.close()


def test_readers_see_a_deleted_point_once_or_not_at_all(tmp_path):
    db = shoal.open(tmp_path / "db", policy=TINY)
    col = db.create_collection("c", dim=8, metric="l2")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    keys = list(range(20))
    bad: list[int] = []

    def write():
        for r in range(150):
            col.upsert(keys, x, [{"r": r} for _ in keys])
            if r % 2:
                col.delete(keys[:10])
            else:
                col.delete(filter={"r": r})

    def read(done):
        while not done.is_set():
            ids = [h.id for h in col.search(x[0], k=25, ef=200)]
            if len(ids) != len(set(ids)):
                bad.append(len(ids) - len(set(ids)))
            let_the_writer_on()

    errors = race(write, read, readers=1)
    assert not errors and not bad, (errors[:3], bad[:5])
    db.close()


READER = r"""
import json, sys, numpy as np, shoal
import os
path, stop = sys.argv[1], sys.argv[2]
x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
print("ready", flush=True)
bad = []
r = 0
while not os.path.exists(stop) or r < 2:  # reads until the writer is done, and at least twice
    r += 1
    with shoal.open(path, read_only=True) as db:
        col = db.get_collection("c")
        for _ in range(3):
            hits = [h.id for h in col.search(x[3], k=25, ef=200)]
            ids = [i for i in hits if i < 1000]
            if sorted(ids) != list(range(20)) or len(set(hits)) != len(hits):
                bad.append(["search", r, sorted(hits)])
        got = col.get(list(range(20)))
        scanned = sum(len(ids) for ids, _, _ in col.scan())
        if any(g is None or g["vector"] is None for g in got) or col.count() != scanned:
            bad.append(["get/count", r, col.count(), scanned])
print(json.dumps({"bad": bad, "rounds": r}), flush=True)
"""


def test_read_only_processes_see_each_point_once_while_the_writer_checkpoints_seals_and_compacts(tmp_path):
    import json
    import subprocess
    import sys

    path = tmp_path / "db"
    db = shoal.open(path, policy=TINY)
    col = db.create_collection("c", dim=8, metric="l2")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    col.upsert(list(range(20)), x, [{"r": 0}] * 20)
    col.upsert(list(range(1000, 1100)), rng.standard_normal((100, 8)).astype(np.float32) + 50)
    col.checkpoint()
    stop = tmp_path / "stop"
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(path), str(stop)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in readers:
        assert proc.stdout.readline() == "ready\n"
    states = set()
    for r in range(1, 31):  # the readers read all along: they stop only when told to
        col.upsert(list(range(20)), x, [{"r": r}] * 20)  # the same points again: new row ids
        col.upsert(list(range(2000 + 10 * r, 2010 + 10 * r)), rng.standard_normal((10, 8)).astype(np.float32) + 50)
        states.add((len(col.stats()["segments"]), col.stats()["log_records"] == 0))
        if r % 7 == 0:
            col.compact()
    stop.touch()
    results = [proc.communicate(timeout=120) for proc in readers]
    db.close()
    for proc, (out, err) in zip(readers, results):
        assert proc.returncode == 0, err[-2000:]
        report = json.loads(out)
        assert report["bad"] == [] and report["rounds"] >= 2, out[:2000]
    assert len(states) > 2  # the writer went through checkpoints, seals and compactions
