"""The write-ahead log: round trips, torn and damaged tails, and real crashes (SIGKILL)."""

import os
import random
import signal
import subprocess
import sys
import time
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shoal
from shoal.storage.wal import WalTruncatedWarning, WriteAheadLog, salvage_log


def payload(i: int) -> bytes:
    return (f"record {i} ".encode() * (i % 7 + 1))[: 5 + i % 300]


def write_log(path, n):
    with WriteAheadLog(path) as wal:
        for i in range(n):
            assert wal.append(i % 3, payload(i)) == i + 1
    return path.read_bytes()


def test_round_trip_and_reopen(tmp_path):
    path = tmp_path / "a.wal"
    write_log(path, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean log opens without a warning
        wal = WriteAheadLog(path)
    assert len(wal) == 50 and wal.last_seq == 50
    assert [(r.seq, r.kind, r.payload) for r in wal.records()] == \
        [(i + 1, i % 3, payload(i)) for i in range(50)]
    assert [r.seq for r in wal.records(after=47)] == [48, 49, 50]
    assert wal.append(1, b"more") == 51
    wal.close()
    assert WriteAheadLog(path).last_seq == 51


def test_first_seq_continues_a_numbering(tmp_path):
    wal = WriteAheadLog(tmp_path / "b.wal", first_seq=1000)
    assert wal.last_seq == 999 and len(wal) == 0
    assert wal.append(0, b"x") == 1000
    wal.close()
    assert [r.seq for r in WriteAheadLog(tmp_path / "b.wal").records()] == [1000]


@pytest.mark.parametrize("seq", [0, 1, 17, 30])
def test_restart_after_keeps_the_later_records_and_a_reader_keeps_the_old_file(tmp_path, seq):
    path = tmp_path / "r.wal"
    write_log(path, 30)
    wal = WriteAheadLog(path)
    reader = WriteAheadLog(path, read_only=True)
    wal.restart_after(seq)
    assert wal.first_seq == seq + 1 and wal.last_seq == 30
    assert [(r.seq, r.payload) for r in wal.records()] == [(i + 1, payload(i)) for i in range(seq, 30)]
    assert wal.append(2, b"next") == 31
    assert [r.seq for r in reader.records(after=seq)] == list(range(seq + 1, 31))  # the old file
    wal.close()
    reader.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = WriteAheadLog(path)
    assert [r.seq for r in again.records()] == list(range(seq + 1, 32))
    with pytest.raises(shoal.InvalidArgumentError, match="outside the log"):
        again.restart_after(40)
    again.close()


def test_every_torn_tail_is_cut_back_to_the_last_whole_record(tmp_path):
    full = write_log(tmp_path / "full.wal", 6)
    whole = WriteAheadLog(tmp_path / "full.wal")
    ends = [off + 17 + length for off, length in whole._records]
    whole.close()
    for cut in range(ends[-2] + 1, len(full)):  # inside the last record
        path = tmp_path / f"cut{cut}.wal"
        path.write_bytes(full[:cut])
        with pytest.warns(WalTruncatedWarning):
            wal = WriteAheadLog(path)
        assert wal.last_seq == 5
        assert path.stat().st_size == ends[-2]
        assert wal.append(0, b"after") == 6  # and the log goes on
        wal.close()


def test_damage_followed_by_valid_records_refuses_to_open_and_salvage_keeps_the_prefix(tmp_path):
    full = write_log(tmp_path / "full.wal", 10)
    wal = WriteAheadLog(tmp_path / "full.wal")
    off4, _ = wal._records[4]
    wal.close()
    bad = bytearray(full)
    bad[off4 + 20] ^= 0xFF  # inside record 5's payload; records 6..10 are intact
    path = tmp_path / "bad.wal"
    path.write_bytes(bytes(bad))
    with pytest.raises(shoal.CorruptIndexError, match=rf"bad.wal: record 5 at byte offset {off4} is damaged"):
        WriteAheadLog(path)
    assert path.read_bytes() == bytes(bad)  # left as it was
    kept, aside = salvage_log(path)
    assert kept == 4 and open(aside, "rb").read() == bytes(bad)  # moved aside, whole
    wal = WriteAheadLog(path)
    assert [r.payload for r in wal.records()] == [payload(i) for i in range(4)]
    assert wal.append(0, b"after") == 5
    wal.close()
    assert salvage_log(path) == (5, None)  # nothing to salvage in a sound log


def test_every_flipped_byte_before_the_last_record_is_refused(tmp_path):
    """A flip anywhere in records 1..5 of 6 is reported, never silently cut; in the last
    record it is a torn tail and is cut."""
    full = write_log(tmp_path / "full.wal", 6)
    wal = WriteAheadLog(tmp_path / "full.wal")
    last_start = wal._records[-1][0]
    wal.close()
    for pos in range(20, len(full), 3):  # past the header
        bad = bytearray(full)
        bad[pos] ^= 0x5A
        path = tmp_path / f"flip{pos}.wal"
        path.write_bytes(bytes(bad))
        if pos < last_start:
            with pytest.raises(shoal.CorruptIndexError, match="byte offset"):
                WriteAheadLog(path)
        else:
            with pytest.warns(WalTruncatedWarning):
                assert WriteAheadLog(path).last_seq == 5


def test_not_a_log(tmp_path):
    path = tmp_path / "x.wal"
    path.write_bytes(b"hello world, not a log at all")
    with pytest.raises(shoal.CorruptIndexError, match="magic"):
        WriteAheadLog(path)
    with pytest.raises(ValueError, match="kind"):
        WriteAheadLog(tmp_path / "y.wal").append(256, b"")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=200)), max_size=20),
       st.integers(0, 2000))
def test_any_prefix_of_a_log_recovers_a_prefix_of_its_records(tmp_path_factory, items, cut):
    path = tmp_path_factory.mktemp("h") / "p.wal"
    with WriteAheadLog(path) as wal:
        for kind, data in items:
            wal.append(kind, data)
    data = path.read_bytes()
    path.write_bytes(data[: max(cut, 20)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WalTruncatedWarning)
        got = [(r.kind, r.payload) for r in WriteAheadLog(path).records()]
    assert got == items[: len(got)]


CHILD = r"""
import sys
from shoal.storage.wal import WriteAheadLog
wal = WriteAheadLog(sys.argv[1])
i = wal.last_seq
print("ready", flush=True)
while True:
    i += 1
    seq = wal.append(i % 5, (b"%d:" % i) * (i % 50 + 1))
    print(seq, flush=True)          # acknowledged: fsynced before append returned
"""


def test_no_acknowledged_record_is_lost_when_the_writer_is_killed(tmp_path):
    """A real writer process is SIGKILLed at random moments, again and again; every record it
    acknowledged is there after each restart, and nothing else is half there."""
    path = tmp_path / "crash.wal"
    rng = random.Random(7)
    acked = 0
    for _ in range(25):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"  # the kill timer starts once it writes
        time.sleep(rng.uniform(0.02, 0.2))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        lines = out.split()
        assert lines, "the writer acknowledged nothing in this round"
        acked = max(acked, int(lines[-1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WalTruncatedWarning)
            wal = WriteAheadLog(path)
        assert wal.last_seq >= acked
        for rec in wal.records(after=max(acked - 30, 0)):
            assert rec.payload == (b"%d:" % rec.seq) * (rec.seq % 50 + 1) and rec.kind == rec.seq % 5
        wal.close()
    assert acked > 25
    assert os.path.getsize(path) > 0


def test_a_damaged_length_field_does_not_allocate_it(tmp_path):
    path = tmp_path / "len.wal"
    write_log(path, 3)
    data = bytearray(path.read_bytes())
    data[20:24] = (2**31 - 1).to_bytes(4, "little")  # record 1's length field; 2 and 3 follow
    path.write_bytes(bytes(data))
    with pytest.raises(shoal.CorruptIndexError, match="record 1 at byte offset 20"):
        WriteAheadLog(path)
    wal3 = bytearray(write_log(tmp_path / "len3.wal", 3))
    off3 = 20 + 17 + len(payload(0)) + 17 + len(payload(1))
    wal3[off3:off3 + 4] = (2**31 - 1).to_bytes(4, "little")  # the last record's: a torn tail
    (tmp_path / "len3.wal").write_bytes(bytes(wal3))
    with pytest.warns(WalTruncatedWarning):
        wal = WriteAheadLog(tmp_path / "len3.wal")
    assert len(wal) == 2 and wal.append(0, b"ok") == 3
