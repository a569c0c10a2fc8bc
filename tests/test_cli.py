"""The shoal command: every command on real files, errors as one line and an exit code."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shoal
from shoal.cli import app, main

README = Path(__file__).resolve().parents[1] / "README.md"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_import_search_info_compact_export_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    db = tmp_path / "db"
    np.save(tmp_path / "v.npy", x)
    code, out, _ = run(capsys, "import", db, "plain", tmp_path / "v.npy", "--metric", "l2", "--batch", "64")
    assert code == 0 and "imported 300 points" in out
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i in range(120):
            f.write(json.dumps({"id": f"d{i}", "vector": x[i].tolist(), "lang": "en" if i % 2 else "fr"}) + "\n")
    code, out, _ = run(capsys, "import", db, "docs", tmp_path / "docs.jsonl")
    assert code == 0 and "imported 120 points" in out

    code, out, _ = run(capsys, "search", db, "docs", "--id", "d3", "--k", "3", "--json")
    hits = json.loads(out)
    assert code == 0 and hits[0]["id"] == "d3" and hits[0]["payload"] == {"lang": "en"}
    code, out, _ = run(capsys, "search", db, "docs", "--id", "d3", "--filter", '{"lang": "fr"}', "--json")
    assert code == 0 and {h["payload"]["lang"] for h in json.loads(out)} == {"fr"}
    np.save(tmp_path / "q.npy", x[7])
    code, out, _ = run(capsys, "search", db, "plain", "--vector-file", tmp_path / "q.npy", "--k", "2")
    assert code == 0 and "plain: 2 results" in out and " 7 " in out

    code, out, _ = run(capsys, "info", db)
    assert code == 0 and "docs" in out and "plain" in out and "300" in out

    with shoal.open(db) as d:
        d.get_collection("docs").delete(filter={"lang": "fr"})
    code, out, _ = run(capsys, "compact", db, "docs")
    assert code == 0 and "60 points" in out

    code, out, _ = run(capsys, "export", db, "docs", tmp_path / "out.jsonl")
    assert code == 0 and "exported 60 points" in out
    code, out, _ = run(capsys, "import", db, "copy", tmp_path / "out.jsonl")
    assert code == 0
    with shoal.open(db) as d:
        a, b = d.get_collection("docs"), d.get_collection("copy")
        keys = [f"d{i}" for i in range(1, 120, 2)]
        for ga, gb in zip(a.get(keys), b.get(keys)):
            assert ga["payload"] == gb["payload"]
            np.testing.assert_allclose(ga["vector"], gb["vector"], rtol=1e-6)
    code, out, _ = run(capsys, "export", db, "plain", tmp_path / "out.npy")
    assert code == 0 and np.load(tmp_path / "out.npy").shape == (300, 8)


def test_parquet_import(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    x = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)
    table = pa.table({"id": list(range(100, 150)), "vector": x.tolist(), "year": [2000 + i for i in range(50)]})
    pq.write_table(table, tmp_path / "p.parquet")
    code, out, _ = run(capsys, "import", tmp_path / "db", "p", tmp_path / "p.parquet")
    assert code == 0 and "imported 50 points" in out
    with shoal.open(tmp_path / "db") as d:
        col = d.get_collection("p")
        assert col.get([120])[0]["payload"] == {"year": 2020}
        assert col.count({"year": {"$gte": 2040}}) == 10


@pytest.mark.parametrize("argv, message", [
    (["import", "{db}", "c", "{tmp}/missing.npy"], "no such file"),
    (["import", "{db}", "c", "{tmp}/bad.txt"], "unknown format"),
    (["search", "{db}", "nope", "--id", "1"], "no collection named 'nope'"),
    (["search", "{db}", "c", "--id", "1", "--filter", '{"a": {"$bad": 1}}'], "unknown operator"),
    (["search", "{db}", "c"], "exactly one of --vector-file and --id"),
    (["export", "{db}", "c", "{tmp}/x.csv"], "writes .jsonl or .npy"),
    (["info", "{tmp}/nowhere"], "no shoal database"),
    (["compact", "{db}", "../etc"], "not valid"),
])
def test_errors_are_one_line_and_exit_1(tmp_path, capsys, argv, message):
    db = tmp_path / "db"
    with shoal.open(db) as d:
        d.create_collection("c", dim=2).upsert([1], [[1.0, 0.0]])
    (tmp_path / "bad.txt").write_text("x")
    code, out, err = run(capsys, *[a.replace("{db}", str(db)).replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 1 and message in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_console_script_and_help():
    exe = Path(sys.executable).with_name("shoal")
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        assert name in done.stdout
        sub = subprocess.run([str(exe), name, "--help"], capture_output=True, text=True, timeout=120)
        assert sub.returncode == 0 and "Usage" in sub.stdout
    bad = subprocess.run([str(exe), "info", "/nonexistent/db"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_every_command_is_documented_in_the_readme():
    text = README.read_text()
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        assert f"shoal {name}" in text, f"README does not document `shoal {name}`"
