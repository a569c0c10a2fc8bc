"""save/load: exact round trips, memory maps, and damage that is always detected."""

import os
import subprocess
import sys

import numpy as np
import pytest

import shoal
from shoal.storage.format import MAGIC
from tests.conftest import random_vectors


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    index = shoal.Index(16, "cosine", m=6, ef_construction=24, seed=4)
    index.add(random_vectors(700, 16))
    path = tmp_path_factory.mktemp("idx") / "a.shoal"
    index.save(path)
    return index, path


@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip_gives_identical_results(saved, mmap):
    index, path = saved
    loaded = shoal.Index.load(path, mmap=mmap)
    q = random_vectors(50, 16, seed=8)
    for a, b in zip(index.search(q, 10, ef=32), loaded.search(q, 10, ef=32)):
        np.testing.assert_array_equal(a, b)
    assert loaded.stats()["count"] == 700 and loaded.metric == "cosine" and loaded.m == 6
    if mmap:
        assert isinstance(loaded._vectors, np.memmap)


def test_adds_after_load_match_adds_without_save(saved, tmp_path):
    index, path = saved
    loaded = shoal.Index.load(path, mmap=True)
    extra = random_vectors(300, 16, seed=21)
    a = shoal.Index.load(path)
    a.add(extra)
    loaded.add(extra)
    np.testing.assert_array_equal(a._links0, loaded._links0)
    assert len(loaded) == 1000


def test_empty_index_round_trip(tmp_path):
    path = tmp_path / "empty.shoal"
    shoal.Index(5, "l2").save(path)
    loaded = shoal.Index.load(path)
    assert len(loaded) == 0 and loaded.dim == 5
    loaded.add(random_vectors(3, 5))
    assert len(loaded) == 3


def test_save_replaces_atomically_and_leaves_no_temp(saved, tmp_path):
    index, _ = saved
    path = tmp_path / "b.shoal"
    path.write_bytes(b"old")
    index.save(path)
    assert sorted(os.listdir(tmp_path)) == ["b.shoal"]
    assert path.read_bytes()[:8] == MAGIC


def damaged_copies(path, tmp_path):
    data = path.read_bytes()
    for where in (3, 9, 13, 17, 40, 200, 2000, len(data) // 2, len(data) - 10):
        bad = bytearray(data)
        bad[where] ^= 0x40
        out = tmp_path / f"flip{where}.shoal"
        out.write_bytes(bytes(bad))
        yield out
    for cut in (0, 5, 20, 100, len(data) // 3, len(data) - 1):
        out = tmp_path / f"cut{cut}.shoal"
        out.write_bytes(data[:cut])
        yield out


def test_every_damage_is_detected(saved, tmp_path):
    _, path = saved
    for bad in damaged_copies(path, tmp_path):
        for mmap in (False, True):
            with pytest.raises(shoal.CorruptIndexError):
                shoal.Index.load(bad, mmap=mmap, verify=True)


def test_foreign_and_missing_files(tmp_path):
    other = tmp_path / "x.npy"
    np.save(other, np.zeros(100))
    with pytest.raises(shoal.CorruptIndexError, match="magic"):
        shoal.Index.load(other)
    with pytest.raises(FileNotFoundError):
        shoal.Index.load(tmp_path / "nope.shoal")


def test_links_damaged_with_valid_checksums_are_caught(saved, tmp_path):
    """A file whose CRCs are right but whose graph is wrong must not reach the kernels."""
    index2 = shoal.Index.load(saved[1])
    index2._links0[5, 0] = 10_000
    path = tmp_path / "graph.shoal"
    index2.save(path)
    with pytest.raises(shoal.CorruptIndexError, match="graph is damaged at node 5"):
        shoal.Index.load(path)


def test_fresh_process_loads_and_answers(saved):
    _, path = saved
    code = (f"import shoal, numpy as np; i = shoal.Index.load({str(path)!r}); "
            "l, d = i.search(np.ones(16, np.float32), 5); print(len(i), l.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["700", "(5,)"]
