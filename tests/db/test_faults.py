"""I/O errors at every point of a workload: the failed operation is all or nothing, the
collection refuses further writes until reopened, and reopening always works with every
acknowledged write present.

Every durable file operation shoal makes goes through ``shoal.storage.files``, which reports
it to a hook first. The workload below is run once to count its operations (N), then once per
operation n and per error (EIO, ENOSPC) with the n-th operation failing. After the failure the
test checks that writes are refused, reopens the database, and compares what it finds with a
model: the state before the failed operation or the state after it, nothing else.
"""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

import shoal
from shoal.storage import files
from tests.db.checks import state

# A crash mid-write leaves a torn log tail, which opening cuts with a warning: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::shoal.storage.wal.WalTruncatedWarning")

POLICY = shoal.Policy(seal_rows=40, checkpoint_min_rows=15, compact_min_rows=30)
DIM = 4


def vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32)


def _upsert(keys, tag):
    # Every point has a document (its words: the tag and the key), so that the crash states
    # check documents and the keyword index too (``checks.state``).
    def op(db):
        db.get_collection("c").upsert(keys, np.stack([vec(hash((k, tag)) % 10**6) for k in keys]),
                                      [{"g": tag, "k": str(k)} for k in keys],
                                      documents=[f"tag{tag} key{k}" for k in keys])

    def model(m):
        for k in keys:
            m["c"][k] = (tuple(vec(hash((k, tag)) % 10**6).tolist()), {"g": tag, "k": str(k)}, f"tag{tag} key{k}")
    return op, model


def _delete_ids(keys):
    def op(db):
        db.get_collection("c").delete(keys)

    def model(m):
        for k in keys:
            m["c"].pop(k, None)
    return op, model


def _delete_filter(tag):
    def op(db):
        db.get_collection("c").delete(filter={"g": tag})

    def model(m):
        for k in [k for k, (_, p, *_) in m["c"].items() if p["g"] == tag]:
            del m["c"][k]
    return op, model


def _call(method):
    return (lambda db: getattr(db.get_collection("c"), method)()), (lambda m: None)


def _create(name, on_disk=False):
    def op(db):
        db.create_collection(name, dim=DIM, metric="l2", on_disk=on_disk)

    def model(m):
        m[name] = {}
    return op, model


def _drop(name):
    return (lambda db: db.drop_collection(name)), (lambda m: m.pop(name))


def _payload_index(field):
    return (lambda db: db.get_collection("c").create_payload_index(field)), (lambda m: None)


WORKLOAD = [
    ("create", *_create("c")),
    ("create other", *_create("d")),
    ("payload index", *_payload_index("g")),
    ("upsert ints", *_upsert(list(range(12)), "a")),
    ("upsert strings", *_upsert([f"s{i}" for i in range(8)], "b")),
    ("replace", *_upsert(list(range(4, 10)), "c")),
    ("delete ids", *_delete_ids([0, 1, "s0", 99])),
    ("checkpoint", *_call("checkpoint")),
    ("upsert to a seal", *_upsert(list(range(100, 125)), "d")),
    ("delete filter", *_delete_filter("b")),
    ("replace to compaction", *_upsert(list(range(100, 118)), "e")),
    ("compact", *_call("compact")),
    ("drop other", *_drop("d")),
    ("upsert after", *_upsert([7, 8, "s9"], "f")),
]
#: The same, with "c" keeping its vectors on disk (memory-mapped row files).
WORKLOAD_ON_DISK = [("create", *_create("c", on_disk=True)), *WORKLOAD[1:]]


class FailNth:
    """A files hook that raises ``OSError(err)`` at the n-th operation (and counts them)."""

    def __init__(self, n: int | None, err: int = errno.EIO) -> None:
        self.n, self.err, self.seen, self.fired = n, err, 0, None
        self.ops: list[tuple[str, str]] = []
        self.lock = threading.Lock()  # checkpoints write segments on a thread of their own

    def __call__(self, op, path, info):
        if op == "sqlite_committed":  # a report, not an operation
            return
        with self.lock:
            self.seen += 1
            self.ops.append((op, os.path.basename(info.get("dst", path))))
            fire = self.seen == self.n
        if fire:
            self.fired = (op, os.path.basename(path))
            raise OSError(self.err, os.strerror(self.err), path)


def run(path, hook, workload=WORKLOAD) -> tuple[dict, dict, str] | None:
    """Run the workload with ``hook``; on the first failure return (model before, model
    after, the failed step); None if nothing failed."""
    model: dict = {}
    previous = files.set_hook(hook)
    try:
        db = shoal.open(path, policy=POLICY)
    except shoal.StorageError:
        files.set_hook(previous)
        return {}, {}, "open"
    try:
        for name, op, update in workload:
            before = {c: dict(points) for c, points in model.items()}
            handle = db.get_collection("c") if "c" in model else None
            try:
                op(db)
            except shoal.StorageError:
                after = {c: dict(points) for c, points in before.items()}
                update(after)
                files.set_hook(None)
                if handle is not None and name not in ("create other", "drop other"):
                    with pytest.raises(shoal.StorageError, match="reopen"):  # refuses writes now
                        handle.upsert([1], vec(0)[None])
                    with pytest.raises(shoal.StorageError, match="reopen"):
                        handle.checkpoint()
                return before, after, name
            update(model)
        try:  # a checkpoint's segment written on a thread of its own may fail as late as this
            db.close()
        except shoal.StorageError:
            return model, model, "close"
        return None
    finally:
        files.set_hook(previous)
        try:
            db.close()
        except shoal.StorageError:
            pass  # a close whose checkpoint failed: the test reopens below


def points_of(model: dict) -> dict:
    """What ``checks.state`` reads back for a model: (vector, payload, document) per key."""
    return {c: dict(pts) for c, pts in model.items()}


@pytest.mark.parametrize("err, workload", [(errno.EIO, WORKLOAD), (errno.ENOSPC, WORKLOAD),
                                           (errno.EIO, WORKLOAD_ON_DISK)],
                         ids=["EIO", "ENOSPC", "EIO-on-disk"])
def test_an_io_error_at_every_point_loses_nothing_acknowledged(tmp_path, err, workload):
    counter = FailNth(None)
    assert run(tmp_path / "count", counter, workload) is None
    total = counter.seen
    assert total > 100  # the workload reaches logs, segments, manifests, SQLite and directories
    ops = counter.ops
    renamed = [name for op, name in ops if op == "rename"]
    assert sum(n.startswith("seg-") for n in renamed) >= 4        # checkpoints, a seal, a compaction
    assert renamed.count("manifest.json") >= 4 and renamed.count("wal.log") >= 4  # log restarts
    assert any(op == "unlink" and n.startswith("seg-") for op, n in ops)  # a replaced segment removed
    assert ("rmtree", ".d.dropping") in ops and ("sqlite_commit", "payloads.sqlite") in ops
    outcomes = {"before": 0, "after": 0}
    for n in range(1, total + 1):
        path = tmp_path / f"n{n}"
        hook = FailNth(n, err)
        failed = run(path, hook, workload)
        assert failed is not None, f"operation {n} ({hook.fired}) failed but no call raised StorageError"
        before, after, step = failed
        with shoal.open(path, policy=POLICY) as db:  # reopening always succeeds
            got = state(db)
            assert got in (points_of(before), points_of(after)), \
                f"after an error at operation {n} ({hook.fired}, in {step!r}) the database holds neither " \
                "the state before that step nor the state after it"
            outcomes["before" if got == points_of(before) else "after"] += 1
            if "c" in got:  # and it goes on
                db.get_collection("c").upsert(["again"], vec(1)[None])
        with shoal.open(path, policy=POLICY) as db:
            assert "c" not in got or db.get_collection("c").get(["again"])[0] is not None
    print(f"{err=}: {total} fault points, outcomes {outcomes}")
    assert outcomes["before"] and outcomes["after"]
