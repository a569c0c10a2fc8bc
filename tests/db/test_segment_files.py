"""Segment files: vectors and codes appended once to row files, checkpoints that write the
new rows and the links (not the segment again), and collections whose vectors stay on disk."""

from __future__ import annotations

import glob
import os
import threading
from collections import Counter

import numpy as np
import pytest

import shoal
from shoal.storage import files

MANUAL = shoal.Policy(checkpoint_min_rows=10**6, checkpoint_max_rows=10**6, compact_min_rows=10**6)
DIM = 64


def unit_rows(n, seed):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Written:
    """A files hook: bytes written, by file suffix."""

    def __init__(self):
        self.bytes = Counter()

    def __call__(self, op, path, info):
        if op == "write":
            name = os.path.basename(path)
            suffix = ".shoal" if ".shoal" in name else os.path.splitext(name)[1]
            self.bytes[suffix] += len(info["data"])


def only(pattern):
    found = glob.glob(pattern)
    assert len(found) == 1, found
    return found[0]


def test_a_checkpoint_appends_the_new_rows_and_rewrites_only_the_links(tmp_path):
    x = unit_rows(2500, 0)
    x[2000:] = x[:500]  # (copies: inside the coded range, so the codes file stays)
    with shoal.open(tmp_path / "db", policy=MANUAL) as db:
        col = db.create_collection("c", dim=DIM)
        col.upsert(list(range(2000)), x[:2000])
        col.checkpoint()
        vec_file = only(str(tmp_path / "db/collections/c/seg-*.f32"))
        with open(vec_file, "rb") as f:
            first = f.read()
        assert len(first) == 2000 * DIM * 4
        col.upsert(list(range(2000, 2500)), x[2000:])
        written = Written()
        previous = files.set_hook(written)
        try:
            col.checkpoint()
        finally:
            files.set_hook(previous)
        # the same row files, grown by the new rows only; the first rows untouched
        assert only(str(tmp_path / "db/collections/c/seg-*.f32")) == vec_file
        with open(vec_file, "rb") as f:
            now = f.read()
        assert now[: len(first)] == first and len(now) == 2500 * DIM * 4
        assert written.bytes[".f32"] == 500 * DIM * 4
        assert written.bytes[".u8"] == 500 * DIM  # codes: one byte per dimension
        # the segment file: ids, levels and links (about 150 bytes a row at m=16), no rows
        assert written.bytes[".shoal"] < 2500 * 160 + 65536 < 2500 * DIM * 4
        hits = col.search(x[:20], k=5)
    with shoal.open(tmp_path / "db", policy=MANUAL) as db:  # and it reads back the same
        again = db.get_collection("c").search(x[:20], k=5)
    assert [[(h.id, h.distance) for h in row] for row in again] == [[(h.id, h.distance) for h in row] for row in hits]


def test_codes_coded_again_go_to_a_new_codes_file_and_the_old_one_goes(tmp_path):
    x = np.random.default_rng(1).standard_normal((600, DIM)).astype(np.float32)
    with shoal.open(tmp_path / "db", policy=MANUAL) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        col.upsert(list(range(500)), x[:500])
        col.checkpoint()
        codes_before = only(str(tmp_path / "db/collections/c/seg-*.u8"))
        col.upsert(list(range(500, 600)), 10 * x[500:])  # far outside the coded range
        col.checkpoint()
        codes_after = only(str(tmp_path / "db/collections/c/seg-*.u8"))
        assert codes_after != codes_before and os.path.getsize(codes_after) == 600 * DIM
        hits = col.search(10 * x[500:520], k=3, ef=64)
        assert [row[0].id for row in hits] == list(range(500, 520))
    with shoal.open(tmp_path / "db", policy=MANUAL) as db:
        again = db.get_collection("c").search(10 * x[500:520], k=3, ef=64)
    assert [[h.id for h in row] for row in again] == [[h.id for h in row] for row in hits]


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_a_damaged_or_missing_row_file_is_reported_not_read(tmp_path, damage):
    with shoal.open(tmp_path / "db", policy=MANUAL) as db:
        db.create_collection("c", dim=DIM).upsert(list(range(300)), unit_rows(300, 2))
    path = only(str(tmp_path / "db/collections/c/seg-*.f32"))
    if damage == "flip":
        with open(path, "r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0x10]))
    elif damage == "truncate":
        os.truncate(path, os.path.getsize(path) - DIM * 4)
    else:
        os.unlink(path)
    with pytest.raises(shoal.CorruptIndexError, match="vectors|missing"):
        shoal.open(tmp_path / "db", policy=MANUAL).get_collection("c")


def _results(col, q):
    return [[(h.id, round(h.distance, 5)) for h in row] for row in col.search(q, k=10, ef=64)]


def test_on_disk_collections_answer_as_in_ram_ones_through_reopens_and_growth(tmp_path):
    """The same writes to a collection in RAM and one on disk: the same graph (same seed),
    so the same results, before and after reopening, and after the mapped file grew."""
    policy = shoal.Policy(seal_rows=1500, checkpoint_min_rows=400, compact_min_rows=10**6)
    x = unit_rows(3000, 3)
    q = unit_rows(30, 4)
    with shoal.open(tmp_path / "db", policy=policy) as db:
        ram = db.create_collection("ram", dim=DIM)
        disk = db.create_collection("disk", dim=DIM, on_disk=True)
        for col in (ram, disk):
            for lo in range(0, 1200, 250):
                col.upsert(list(range(lo, lo + 250)), x[lo:lo + 250], [{"lo": lo}] * 250)
            col.delete(list(range(0, 1200, 7)))
        assert _results(ram, q) == _results(disk, q)
        assert disk.config["on_disk"] and not ram.config["on_disk"]
        assert disk.stats()["memory_bytes"] < ram.stats()["memory_bytes"] - 1000 * DIM * 4 // 2
    for round_ in range(2):  # reopen, grow past the mapped file's end (and a seal), reopen
        with shoal.open(tmp_path / "db", policy=policy) as db:
            ram, disk = db.get_collection("ram"), db.get_collection("disk")
            assert _results(ram, q) == _results(disk, q)
            lo = 1200 + 900 * round_
            for col in (ram, disk):
                col.upsert(list(range(lo, lo + 900)), x[lo:lo + 900])
            assert _results(ram, q) == _results(disk, q)
            for seg in disk._snap.segments:  # grown into the mapped file, not into RAM
                assert isinstance(seg.view.vectors, np.memmap)
            for key in (lo, lo + 899, 5):
                assert np.array_equal(ram.get([key])[0]["vector"], disk.get([key])[0]["vector"])
    with shoal.open(tmp_path / "db", policy=policy) as db:
        disk = db.get_collection("disk")
        assert len(disk.stats()["segments"]) >= 2  # sealed at 1500 rows
        assert disk.count() == 3000 - len(range(0, 1200, 7))


def test_on_disk_must_be_a_bool(tmp_path):
    with shoal.open(tmp_path / "db") as db:
        with pytest.raises(TypeError, match="on_disk"):
            db.create_collection("c", dim=4, on_disk="yes")
        assert db.list_collections() == []


def test_the_writer_goes_on_while_a_checkpoint_writes_its_segment(tmp_path):
    """The stall bound: a checkpoint stops the writer only to repair and copy the links; its
    rows and segment file are written on a thread of its own. Here that thread is held
    before it writes the segment file: upserts go on meanwhile, and the checkpoint finishes
    at the first write after it is released."""
    policy = shoal.Policy(checkpoint_min_rows=500, checkpoint_max_rows=500, compact_min_rows=10**6)
    x = unit_rows(3000, 5)
    held, release = threading.Event(), threading.Event()

    def hold(op, path, info):
        if op == "create" and path.endswith(".tmp") and ".seg-" in path \
                and threading.current_thread().name.startswith("shoal-checkpoint"):
            held.set()
            assert release.wait(120)

    with shoal.open(tmp_path / "db", policy=policy) as db:
        col = db.create_collection("c", dim=DIM)
        previous = files.set_hook(hold)
        try:
            col.upsert(list(range(500)), x[:500])  # due: the checkpoint starts
            assert held.wait(60)
            done = threading.Event()

            def more():
                for lo in range(500, 2000, 250):
                    col.upsert(list(range(lo, lo + 250)), x[lo:lo + 250])
                done.set()
            writer = threading.Thread(target=more)
            writer.start()
            assert done.wait(120), "an upsert waited for the checkpoint's segment file"
            assert col.stats()["log_records"] == 7 and col.count() == 2000  # nothing checkpointed yet
            release.set()
            writer.join()
        finally:
            release.set()
            files.set_hook(previous)
        col._pending.thread.join()
        col.upsert([2000], x[2000:2001])  # finishes it: the log keeps what came after
        assert col.stats()["log_records"] == 7
        assert [h.id for h in col.search(x[1999], k=1)] == [1999]
    with shoal.open(tmp_path / "db", policy=policy) as db:
        col = db.get_collection("c")
        assert col.count() == 2001 and [h.id for h in col.search(x[77], k=1)] == [77]


def test_a_sealed_segment_gives_back_the_room_it_kept_for_growth(tmp_path):
    policy = shoal.Policy(seal_rows=700, checkpoint_min_rows=300, compact_min_rows=10**6)
    x = unit_rows(1000, 6)
    with shoal.open(tmp_path / "db", policy=policy) as db:
        col = db.create_collection("c", dim=DIM)
        for lo in range(0, 1000, 100):
            col.upsert(list(range(lo, lo + 100)), x[lo:lo + 100])
        sealed = col._snap.segments[0]
        stats = sealed.index.stats()
        # (sealed after one checkpoint beside the writer and a short one that stops it)
        assert len(col._snap.segments) == 2 and stats["capacity"] == stats["count"] >= 700
        assert sealed.index._codes is None and sealed.view.links0.shape[0] == stats["count"]
        assert [row[0].id for row in col.search(x[::50], k=1, ef=64)] == list(range(0, 1000, 50))


def test_writes_go_on_while_a_compaction_builds_and_none_of_them_is_lost_or_shown_twice(tmp_path):
    """The compaction's merged segment is built and saved on a thread of its own (held here
    before it writes its file); upserts, replacements and deletes meanwhile land in a new
    active segment and as tombstones on the rows being merged, and stay so after the swap."""
    policy = shoal.Policy(checkpoint_min_rows=10**6, checkpoint_max_rows=10**6, compact_min_rows=10**6)
    x = unit_rows(1000, 7)
    held, release = threading.Event(), threading.Event()

    def hold(op, path, info):
        if op == "create" and ".seg-" in path and threading.current_thread().name.startswith("shoal-compact"):
            held.set()
            assert release.wait(120)

    with shoal.open(tmp_path / "db", policy=policy) as db:
        col = db.create_collection("c", dim=DIM)
        col.upsert(list(range(600)), x[:600], [{"v": 1}] * 600)
        col.delete(list(range(200)))
        previous = files.set_hook(hold)
        compactor = threading.Thread(target=col.compact)
        try:
            compactor.start()
            assert held.wait(60)
            done = threading.Event()

            def meanwhile():
                col.upsert(list(range(600, 800)), x[600:800], [{"v": 1}] * 200)   # new
                col.upsert(list(range(200, 250)), x[800:850], [{"v": 2}] * 50)    # replaced
                col.delete(list(range(250, 300)))                                  # deleted
                done.set()
            writer = threading.Thread(target=meanwhile)
            writer.start()
            assert done.wait(120), "a write waited for the compaction"
        finally:
            release.set()
            files.set_hook(previous)
        writer.join()
        compactor.join()
        assert col.count() == 550 and len(col.stats()["segments"]) == 2  # merged + the new active
    for _ in range(2):  # as written, and reopened
        with shoal.open(tmp_path / "db", policy=policy) as db:
            col = db.get_collection("c")
            assert col.count() == 550
            assert col.get(list(range(250, 300))) == [None] * 50
            assert all(g["payload"] == {"v": 2} for g in col.get(list(range(200, 250))))
            hits = col.search(x[800:850], k=3, ef=64)
            assert [row[0].id for row in hits] == list(range(200, 250))
            for row in col.search(x[:900:7], k=20, ef=128):
                ids = [h.id for h in row]
                assert len(ids) == len(set(ids)) and not set(ids) & (set(range(200)) | set(range(250, 300)))


def test_a_stale_default_beam_is_calibrated_beside_the_opener(tmp_path):
    x = unit_rows(2000, 8)
    with shoal.open(tmp_path / "db", policy=MANUAL) as db:
        col = db.create_collection("c", dim=DIM)
        col.upsert(list(range(2000)), x)
        col._join_calibration()
        index = col._snap.segments[-1].index
        index._calibration = {**index.calibration, "count": 1000}  # as if it grew since
        col.upsert([2000], x[:1])  # (a change to save)
        col._join_calibration()
        index._calibration = {**index.calibration, "count": 1000}
        col.checkpoint()
    with shoal.open(tmp_path / "db", policy=MANUAL) as db:
        col = db.get_collection("c")
        index = col._snap.segments[-1].index
        assert col._calibrating is not None  # opening did not wait for it
        assert [h.id for h in col.search(x[5], k=1)] == [5]  # the last calibration serves meanwhile
        col._join_calibration()
        assert index.calibration["count"] == 2001


def test_a_long_append_is_synced_in_pieces_so_the_page_cache_never_holds_much_of_it(tmp_path, monkeypatch):
    """A checkpoint's long writes are synced piece by piece (``files.SYNC_PIECE``): a small
    fsync of the log on the writer's thread then waits for one piece at most, not for all."""
    from shoal.storage.rows import RowFile

    monkeypatch.setattr(files, "SYNC_PIECE", 4096)
    events = []
    previous = files.set_hook(lambda op, path, info: events.append((op, os.path.basename(path),
                                                                     len(info.get("data", b"")))))
    try:
        rows = unit_rows(100, 9)  # 25,600 bytes: seven pieces
        rf = RowFile(str(tmp_path / "seg.f32"))
        rf.append(rows)
    finally:
        files.set_hook(previous)
    ops = [(op, n) for op, name, n in events if name == "seg.f32" and op in ("write", "fsync")]
    assert [n for op, n in ops if op == "write"] == [4096] * 6 + [1024]
    # No two writes without a sync between them, and one at the end.
    assert all(a[0] != b[0] for a, b in zip(ops, ops[1:])) and ops[-1][0] == "fsync"
    assert np.array_equal(np.fromfile(tmp_path / "seg.f32", np.float32).reshape(100, DIM), rows)
