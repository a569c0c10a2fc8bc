"""Power loss at every point of a workload (``tests/harness/powerloss.py`` builds the states).

SIGKILL leaves the page cache, so the crash tests elsewhere cannot tell whether shoal syncs
anything. Here every file operation of the fault-injection workload is recorded, and before
each one the directory is rebuilt as a power loss could leave it: unsynced data lost or torn,
unsynced renames and unlinks undone, SQLite at its last durable commit. Each state must open
and hold every acknowledged write (and the operation in flight wholly or not at all).

The second test proves the first: treating any one of shoal's fsyncs as never made (which is
what deleting it from the code would do) must make some crash state lose a write.
"""

from __future__ import annotations

import os

import pytest

import shoal
from shoal.storage import files
from tests.db.checks import state

# A crash mid-write leaves a torn log tail, which opening cuts with a warning: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::shoal.storage.wal.WalTruncatedWarning")
from tests.db.test_faults import POLICY, WORKLOAD, WORKLOAD_ON_DISK
from tests.harness.powerloss import Recorder


def record(tmp_path, ignore=None, durability="sync", workload=WORKLOAD, policy=POLICY) -> tuple[Recorder, list[dict]]:
    """Run the workload under a recorder; models[k] is the state after k operations. With
    ``durability="sync"`` each operation is acknowledged when it returns; with ``"batch"``
    only at the ``flush()`` after every third operation (and at close)."""
    root = tmp_path / "db"
    os.makedirs(root)
    rec = Recorder(str(root), out=str(tmp_path / "crash"), ignore=ignore)
    models: list[dict] = [{}]
    previous = files.set_hook(rec)
    try:
        db = shoal.open(root, policy=policy, durability=durability)
        for i, (_, op, update) in enumerate(workload):
            op(db)
            if durability == "sync":
                rec.ack(i + 1)
            elif i % 3 == 2 and "c" in db.list_collections():
                db.get_collection("c").flush()
                rec.ack(i + 1)
            model = {c: dict(points) for c, points in models[-1].items()}
            update(model)
            models.append(model)
        db.close()
        rec.ack(len(workload))
        rec.finish()
    finally:
        files.set_hook(previous)
    return rec, models


def check(rec: Recorder, models: list[dict], stop_at_first: bool = False, batch: bool = False) -> list[str]:
    """Open every crash state; the problems found (empty: none). A state must hold the
    acknowledged operations and the one in flight wholly or not at all; with ``batch``, any
    number of the unacknowledged operations after the last flush, each wholly or not at all."""
    problems = []
    for path, variant, acked in rec.crash_points:
        allowed = models[acked:] if batch else models[acked: acked + 2]
        try:
            with shoal.open(path, policy=POLICY) as db:
                got = state(db)
        except Exception as exc:  # noqa: BLE001 - an unopenable state is the failure reported
            problems.append(f"{os.path.basename(path)}: does not open: {type(exc).__name__}: {exc}")
        else:
            if got not in allowed:
                lost = {c: sorted(set(allowed[0].get(c, {})) - set(got.get(c, {})), key=str) for c in allowed[0]}
                problems.append(f"{os.path.basename(path)} ({variant}, {acked} operations acknowledged): "
                                f"holds neither state; acknowledged points missing: {lost}")
        if problems and stop_at_first:
            break
    return problems


@pytest.mark.parametrize("workload", [WORKLOAD, WORKLOAD_ON_DISK], ids=["in-ram", "on-disk"])
def test_every_power_loss_state_opens_with_every_acknowledged_write(tmp_path, workload):
    rec, models = record(tmp_path, workload=workload)
    problems = check(rec, models)
    print(f"{len(rec.crash_points)} crash states checked ({len(rec.crash_points) // 4} crash points x 4 variants)")
    assert len(rec.crash_points) > 400
    assert not problems, f"{len(problems)} of {len(rec.crash_points)} crash states are wrong:\n" + "\n".join(problems[:10])


def test_batch_durability_keeps_everything_before_the_last_flush(tmp_path):
    rec, models = record(tmp_path, durability="batch")
    problems = check(rec, models, batch=True)
    assert not problems, f"{len(problems)} of {len(rec.crash_points)} crash states are wrong:\n" + "\n".join(problems[:10])
    # and the test can fail: without the flush's fsync, writes before it are lost (with
    # checkpoints only where the workload asks: one beside the writer may cover them first)
    rec, models = record(tmp_path / "planted", ignore=lambda op, path, info: op == "fsync" and path.endswith("wal.log"),
                         durability="batch", policy=MANUAL)
    assert check(rec, models, stop_at_first=True, batch=True)


MANUAL = shoal.Policy(seal_rows=10**6, checkpoint_min_rows=10**6, checkpoint_max_rows=10**6, compact_min_rows=10**6)

FSYNCS = {
    "log record": lambda op, path, info: op == "fsync" and path.endswith("wal.log"),
    "new log file": lambda op, path, info: op == "fsync" and ".wal.log." in path,
    "segment file": lambda op, path, info: op == "fsync" and "seg-" in os.path.basename(path)
    and path.endswith(".tmp"),
    "vectors row file": lambda op, path, info: op == "fsync" and path.endswith(".f32"),
    "codes row file": lambda op, path, info: op == "fsync" and path.endswith(".u8"),
    "manifest file": lambda op, path, info: op == "fsync" and "manifest.json" in path,
    "config file": lambda op, path, info: op == "fsync" and "config.json" in path,
    "collection directory": lambda op, path, info: op == "fsync_dir" and os.path.basename(os.path.dirname(path)) == "collections",
    "collections directory": lambda op, path, info: op == "fsync_dir" and path.endswith("collections"),
    "payload store's durable commit": lambda op, path, info: op == "sqlite_committed",
}


@pytest.mark.parametrize("site", list(FSYNCS))
def test_each_fsync_is_needed(tmp_path, site):
    rec, models = record(tmp_path, ignore=FSYNCS[site])
    assert check(rec, models, stop_at_first=True), f"without the {site} fsync no crash state loses a write"
