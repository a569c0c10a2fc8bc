"""Damage to a collection's log: refused loudly, never silently dropped; repaired only when
asked, keeping the damaged log aside; the payload store and the graph agree afterwards."""

import os
import subprocess
import sys

import numpy as np
import pytest

import shoal
from shoal.storage.wal import WalTruncatedWarning


WRITER = r"""
import os, sys, numpy as np, shoal
col = shoal.open(sys.argv[1]).create_collection("c", dim=4, metric="l2")
rng = np.random.default_rng(0)
for b in range(5):  # the third replaces keys 0..4
    keys = [0, 1, 2, 3, 4, 20, 21, 22, 23, 24] if b == 2 else list(range(b * 10, b * 10 + 10))
    col.upsert(keys, rng.standard_normal((10, 4)).astype(np.float32), [{"b": b}] * 10)
print(col._wal._records[1][0], flush=True)
os._exit(0)  # no close, which would checkpoint and empty the log: the log holds all five
"""


def five_upserts(path):
    """Five logged upserts of 10 rows (the third replacing five of the first), by a process
    that then dies; returns the byte offset of the log's second record."""
    out = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout)


def flip(path, offset):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))
    return bytes(data)


@pytest.fixture
def damaged(tmp_path):
    path = tmp_path / "db"
    second = five_upserts(path)
    log = path / "collections" / "c" / "wal.log"
    data = flip(log, second + 30)  # inside the second record's payload
    return path, log, second, data


def test_damage_in_the_middle_of_the_log_refuses_to_open(damaged):
    path, log, second, data = damaged
    with shoal.open(path) as db:
        with pytest.raises(shoal.CorruptIndexError, match=rf"wal.log: record 2 at byte offset {second}"):
            db.get_collection("c")
    assert open(log, "rb").read() == data  # untouched


def test_recover_keeps_the_prefix_moves_the_log_aside_and_store_and_graph_agree(damaged):
    path, log, _, data = damaged
    with pytest.warns(RuntimeWarning, match="moved the damaged log"):
        with shoal.open(path, recover=True) as db:
            col = db.get_collection("c")
            assert col.count() == 10  # the first record's rows; the rest were after the damage
            got = col.get(list(range(50)))
            assert [g is not None for g in got] == [True] * 10 + [False] * 40
            # keys 0..4 as the first record wrote them (the third's replacement was cut)
            assert all(g["vector"] is not None and g["payload"] == {"b": 0} for g in got[:10])
            hits = col.search(np.zeros(4, np.float32), k=50, ef=100)
            assert sorted(h.id for h in hits) == list(range(10))
            assert col.count({"b": 3}) == 0
            col.upsert([45], np.ones((1, 4), np.float32))  # and it goes on
    assert open(str(log) + ".damaged-1", "rb").read() == data  # kept whole
    with shoal.open(path) as db:
        col = db.get_collection("c")
        assert col.count() == 11 and col.get([45])[0] is not None


def test_shoal_repair_command(damaged):
    path, log, _, data = damaged
    shoal_cli = [sys.executable, "-m", "shoal.cli"]
    out = subprocess.run([*shoal_cli, "repair", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "damaged-1" in out.stdout and "c" in out.stdout
    assert open(str(log) + ".damaged-1", "rb").read() == data
    with shoal.open(path) as db:
        assert db.get_collection("c").count() == 10


def test_a_torn_tail_is_cut_with_a_warning_and_nothing_else_lost(tmp_path):
    path = tmp_path / "db"
    five_upserts(path)
    log = path / "collections" / "c" / "wal.log"
    data = open(log, "rb").read()
    open(log, "wb").write(data[:-7])  # the last record cut short: a crash mid-write
    with pytest.warns(WalTruncatedWarning):
        with shoal.open(path) as db:
            col = db.get_collection("c")
            assert col.count() == 35  # the unfinished fifth upsert is gone, all of it
            got = col.get(list(range(50)))
            assert [g is not None for g in got] == [True] * 25 + [False] * 5 + [True] * 10 + [False] * 10
            assert [g["payload"]["b"] for g in got[:5]] == [2] * 5
