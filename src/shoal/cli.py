"""The ``shoal`` command: import, search, inspect, compact, export and serve databases.

Every command takes the database directory first; errors print one line and exit non-zero.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import shoal
from shoal import errors, readers

app = typer.Typer(help="shoal: an embedded vector database (HNSW on numba).", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)

#: Errors that are the user's to fix: one line, exit 1, no traceback.
USER_ERRORS = (errors.ShoalError, ValueError, TypeError, KeyError, FileNotFoundError,
               PermissionError, IsADirectoryError, NotADirectoryError, json.JSONDecodeError)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]:>9} vec/s"), TimeRemainingColumn(),
                    console=err, transient=False)


# ----------------------------------------------------------------------------- commands
@app.command("import")
def import_(db: Path = typer.Argument(..., help="database directory (created if needed)"),
            collection: str = typer.Argument(..., help="collection name (created if needed)"),
            file: Path = typer.Argument(..., help=".npy (vectors), .jsonl or .parquet (id, vector, payload fields)"),
            metric: str = typer.Option("cosine", help="metric of a new collection: cosine, ip or l2"),
            batch: int = typer.Option(1000, min=1, help="points per upsert"),
            id_field: str = typer.Option("id", help="id field or column (.jsonl, .parquet)"),
            vector_field: str = typer.Option("vector", help="vector field or column (.jsonl, .parquet)")) -> None:
    """Import vectors (and payloads) from a file into a collection, with a progress bar.

    .npy: a (n, dim) array, ids 0..n-1. .jsonl: one object per line with the id and vector
    fields; a "payload" object, or else every other field, is the payload. .parquet: a vector
    column (list of floats), an optional id column, other columns are the payload."""
    total, batches = readers.batches(file, batch, id_field, vector_field)
    with shoal.open(db) as database:
        col = None
        done = 0
        t0 = time.perf_counter()
        with _progress() as bar:
            task = bar.add_task(f"import {file.name}", total=total, rate="-")
            for ids, vecs, pays in batches:
                if col is None:
                    col = (database.get_collection(collection) if collection in database.list_collections()
                           else database.create_collection(collection, dim=int(vecs.shape[1]), metric=metric))
                col.upsert(ids, vecs, pays)
                done += len(ids)
                bar.update(task, advance=len(ids), rate=f"{done / max(time.perf_counter() - t0, 1e-9):,.0f}")
        secs = time.perf_counter() - t0
    out.print(f"imported {done:,} points into {collection!r} in {secs:.1f} s ({done / max(secs, 1e-9):,.0f} vec/s)")


@app.command()
def search(db: Path = typer.Argument(..., help="database directory"),
           collection: str = typer.Argument(..., help="collection name"),
           vector_file: Optional[Path] = typer.Option(None, help=".npy file: one vector, or the first row"),
           id: Optional[str] = typer.Option(None, "--id", help="search with the vector of this point"),
           k: int = typer.Option(10, min=1, help="results"),
           ef: Optional[int] = typer.Option(None, min=1, help="beam width (default: the index's calibrated one, for recall@10 0.95)"),
           filter: Optional[str] = typer.Option(None, help='payload filter as JSON, e.g. \'{"lang": "en"}\''),
           as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Nearest points to a vector (from a file) or to a stored point (--id)."""
    if (vector_file is None) == (id is None):
        raise errors.InvalidArgumentError("give exactly one of --vector-file and --id")
    flt = json.loads(filter) if filter else None
    with shoal.open(db, read_only=True) as database:
        col = database.get_collection(collection)
        if vector_file is not None:
            q = np.load(vector_file)
            q = q[0] if q.ndim == 2 else q
        else:
            key: Any = int(id) if id.lstrip("-").isdigit() else id
            got = col.get([key])[0]
            if got is None:
                raise errors.IdNotFoundError(f"no point with id {key!r} in {collection!r}")
            q = got["vector"]
        hits = col.search(q, k=k, ef=ef, filter=flt)
    if as_json:
        out.print_json(json.dumps([{"id": h.id, "score": h.score, "payload": h.payload} for h in hits]))
        return
    table = Table(title=f"{collection}: {len(hits)} results")
    for name in ("#", "id", "score", "payload"):
        table.add_column(name)
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), str(h.id), f"{h.score:.4f}", json.dumps(h.payload)[:100])
    out.print(table)


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@app.command()
def info(db: Path = typer.Argument(..., help="database directory")) -> None:
    """Collections with their counts, segments, disk and memory use."""
    if not db.is_dir():
        raise FileNotFoundError(f"no shoal database at {db}")
    with shoal.open(db, read_only=True) as database:
        table = Table(title=f"{db}")
        for name in ("collection", "dim", "metric", "points", "segments", "deleted rows", "log records",
                     "disk", "memory"):
            table.add_column(name, justify="right" if name not in ("collection", "metric") else "left")
        for name in database.list_collections():
            col = database.get_collection(name)
            stats = col.stats()
            table.add_row(name, str(col.dim), col.metric, f"{stats['count']:,}", str(len(stats["segments"])),
                          f"{stats['deleted_rows']:,}", str(stats["log_records"]),
                          _size(_disk_bytes(db / "collections" / name)), _size(stats["memory_bytes"]))
    out.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command()
def compact(db: Path = typer.Argument(..., help="database directory"),
            collection: str = typer.Argument(..., help="collection name")) -> None:
    """Rebuild a collection's segments into one without deleted rows."""
    with shoal.open(db) as database:
        col = database.get_collection(collection)
        t0 = time.perf_counter()
        col.compact()
        out.print(f"compacted {collection!r}: {col.count():,} points in {time.perf_counter() - t0:.1f} s")


@app.command()
def repair(db: Path = typer.Argument(..., help="database directory")) -> None:
    """Open every collection, keeping what comes before damage in the middle of a log; the
    damaged log is moved aside (PATH.damaged-N), never deleted. Writes after the damage are
    lost: run it only when `shoal info` reports a damaged log."""
    import warnings

    with shoal.open(db, recover=True) as database:
        for name in database.list_collections():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                col = database.get_collection(name)
            moved = [str(w.message) for w in caught if "damaged" in str(w.message)]
            state = moved[0] if moved else "log sound, nothing to repair"
            out.print(f"{name}: {col.count():,} points; {state}")


@app.command()
def export(db: Path = typer.Argument(..., help="database directory"),
           collection: str = typer.Argument(..., help="collection name"),
           file: Path = typer.Argument(..., help=".jsonl (ids, vectors, payloads) or .npy (vectors only)")) -> None:
    """Write every point of a collection to a file (.jsonl round-trips through import)."""
    suffix = file.suffix.lower()
    if suffix not in (".jsonl", ".npy"):
        raise errors.InvalidArgumentError(f"{file}: export writes .jsonl or .npy")
    with shoal.open(db, read_only=True) as database:
        col = database.get_collection(collection)
        total = col.count()
        n = 0
        parts = []
        tmp = file.with_name(file.name + ".tmp")
        with _progress() as bar, open(tmp, "w", encoding="utf-8") as f:
            task = bar.add_task(f"export {collection}", total=total, rate="-")
            for ids, vecs, pays in col.scan():
                if suffix == ".npy":
                    parts.append(np.array(vecs))
                else:
                    for i, v, p in zip(ids, vecs.tolist(), pays):
                        f.write(json.dumps({"id": i, "vector": v, "payload": p}) + "\n")
                n += len(ids)
                bar.update(task, advance=len(ids), rate="")
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, np.concatenate(parts) if parts else np.zeros((0, col.dim), np.float32))
        os.replace(tmp, file)
    out.print(f"exported {n:,} points of {collection!r} to {file}")


@app.command()
def serve(db: Path = typer.Argument(..., help="database directory (created if needed)"),
          host: str = typer.Option("127.0.0.1", help="address to bind"),
          port: int = typer.Option(6333, help="port"),
          api_key: Optional[str] = typer.Option(None, envvar="SHOAL_API_KEY", help="read-write key"),
          read_only_api_key: Optional[str] = typer.Option(None, envvar="SHOAL_READ_ONLY_API_KEY",
                                                          help="read-only key"),
          allow_unauthenticated: bool = typer.Option(False, help="serve a non-loopback address without a key"),
          read_only: bool = typer.Option(False, help="open the database read-only")) -> None:
    """Serve a database over HTTP (REST; OpenAPI at /docs)."""
    from shoal.server import serve as run

    run(db, host, port, api_key=api_key, read_only_api_key=read_only_api_key,
        allow_unauthenticated=allow_unauthenticated, read_only=read_only)


@app.command()
def bench(dataset: Path = typer.Argument(..., help="dataset directory (the wordnet-minilm-384 layout)"),
          out_dir: Path = typer.Option(Path("shoal-bench"), "--out", help="where to write the results"),
          reps: int = typer.Option(3, min=1, help="runs per figure (medians)"),
          engines: str = typer.Option("shoal,hnswlib,faiss,usearch", help="engines to compare (with --peers)"),
          peers: Optional[Path] = typer.Option(None, help="module file with the peer adapters "
                                               "(benchmarks/peers.py in a checkout); without it, shoal alone"),
          sweep: str = typer.Option("32,40,48,64,100", help="ef_construction values of the Pareto sweep ('' skips)"),
          scaling: bool = typer.Option(True, help="measure thread and size scaling")) -> None:
    """Benchmark build and search (against hnswlib, faiss, usearch with --peers): core.md, core.json, recall_qps-DATASET.png."""
    from shoal import bench as bench_module

    if not (dataset / "base.npy").exists() and not any(dataset.glob("*.npy")):
        raise FileNotFoundError(f"{dataset}: not a dataset directory (see shoal.datasets)")
    code = bench_module.main(["--dataset", str(dataset), "--out", str(out_dir), "--reps", str(reps),
                              "--engines", engines, "--sweep", sweep]
                             + ([] if scaling else ["--skip-scaling"])
                             + ([] if peers is None else ["--peers", str(peers)]))
    if code:
        raise typer.Exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the command; a user error prints one line and returns 1."""
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 1
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, USER_ERRORS):
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
