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


def test_vectors_in_a_file_and_split_saves_answer_as_in_ram(tmp_path):
    """``Index(vectors_file=)`` keeps rows in a mapped file; ``save(split=True)`` appends to row
    files; ``load(mmap="r+")`` grows into them: the same answers as an index in RAM."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    q = rng.standard_normal((20, 32)).astype(np.float32)
    ram = shoal.Index(32, "l2", seed=1)
    disk = shoal.Index(32, "l2", seed=1, vectors_file=tmp_path / "rows.f32")
    for index in (ram, disk):
        index.add(x[:2000])
    assert disk.stats()["vectors_on_disk"] and not ram.stats()["vectors_on_disk"]
    np.testing.assert_array_equal(ram.search(q, 5, ef=64)[0], disk.search(q, 5, ef=64)[0])
    disk.save(tmp_path / "a.shoal", split=True)
    assert sorted(disk.external_files()) == ["a.u8", "rows.f32"]
    again = shoal.Index.load(tmp_path / "a.shoal", mmap="r+")
    for index in (ram, again):
        index.add(x[2000:])
    assert isinstance(again.view().vectors, np.memmap)  # grew into the file
    np.testing.assert_array_equal(ram.search(q, 5, ef=64)[0], again.search(q, 5, ef=64)[0])
    again.save(tmp_path / "b.shoal", split=True)
    assert os.path.getsize(tmp_path / "rows.f32") >= 3000 * 32 * 4
    last = shoal.Index.load(tmp_path / "b.shoal")
    np.testing.assert_array_equal(last.get(np.arange(3000)), x)
    ram.save(tmp_path / "plain.shoal")
    with pytest.raises(shoal.InvalidArgumentError, match="split"):
        shoal.Index.load(tmp_path / "plain.shoal", mmap="r+")
