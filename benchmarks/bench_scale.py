"""shoal at a million rows (issue 12): rows made from real data, against hnswlib in the same run.

A million real embeddings cannot be shipped, so rows are made from the real WordNet set by a
fixed construction (``make_rows``): synthetic row i is the renormalised point
``(1 - t) * a + t * b + e``, where ``a`` is a uniformly drawn real row, ``b`` one of ``a``'s ten
exact nearest real rows (drawn uniformly), ``t ~ U(0, 0.5)`` and ``e`` Gaussian noise of norm
about 0.1 (unit rows: a tenth of a typical distance to a near neighbour). Every size uses the
same construction (seed 0; a larger size extends a smaller one), the queries are the data set's
1,000 held-out real queries, and the ground truth is exact (BLAS over all rows).

For each size, each engine runs in its own process (peak RSS is its own):
- ``index``: ``shoal.Index.add`` (2 threads, defaults), then QPS at recall@10 0.95 (1 thread,
  queries as one batch, interpolated over an ef sweep) and the calibrated default;
- ``hnswlib``: ``add_items`` with M=16, ef_construction=64, 2 threads; the same sweep;
- ``collection``: durable ingest (``upsert`` of 1,000 rows with payloads, two payload indexes),
  each upsert's time (median, p99, worst: the longest the writer was stopped), the
  checkpoints' timings (the part that stops the writer, and the segment write beside it), a
  final ``checkpoint()``, disk use, then reopen + first query, single-query latency and batch
  QPS at the ef where the Index reached 0.95, and resident memory (own and mapped-file pages);
- ``on-disk``: the same collection created with ``on_disk=True`` (float32 rows memory-mapped).

    .venv/bin/python benchmarks/bench_scale.py [--sizes 100000,1000000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bench_core import write_results  # noqa: E402  (same directory)
from shoal.bench import default_recall, median_time, qps_at, reset_peak, rss_now, rss_parts, rss_peak  # noqa: E402
from shoal.datasets import FULL, load_dataset, recall_at_k  # noqa: E402

EFS = [16, 24, 32, 48, 64, 96, 128, 192, 256]
NEIGHBOURS = 10
NOISE = 0.1
BATCH = 1000


# ----------------------------------------------------------------------------- the rows
def real_neighbours(base: np.ndarray, cache: Path) -> np.ndarray:
    """int32 (n, NEIGHBOURS): each real row's exact nearest other rows (BLAS; cached)."""
    path = cache / f"neighbours-{len(base)}.npy"
    if path.exists():
        return np.load(path)
    out = np.empty((len(base), NEIGHBOURS), np.int32)
    for lo in range(0, len(base), 2048):
        sims = base[lo:lo + 2048] @ base.T
        sims[np.arange(sims.shape[0]), np.arange(lo, lo + sims.shape[0])] = -np.inf
        top = np.argpartition(-sims, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
        out[lo:lo + 2048] = top
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def make_rows(base: np.ndarray, nbrs: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` synthetic unit rows (see the module's docstring), made in blocks so that the
    first rows of a larger size are the rows of a smaller one."""
    out = np.empty((n, base.shape[1]), np.float32)
    block = 100_000
    for lo in range(0, n, block):
        rng = np.random.default_rng([seed, lo // block])
        m = min(block, n - lo)
        a = rng.integers(0, len(base), m)
        b = nbrs[a, rng.integers(0, NEIGHBOURS, m)]
        t = rng.uniform(0, 0.5, (m, 1)).astype(np.float32)
        x = (1 - t) * base[a] + t * base[b]
        x += rng.normal(0, NOISE / np.sqrt(base.shape[1]), x.shape).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[lo:lo + m] = x
    return out


def truth(queries: np.ndarray, rows: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k rows of each query by inner product (BLAS, in blocks of rows)."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for lo in range(0, len(rows), 200_000):
        s = queries @ rows[lo:lo + 200_000].T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + lo], axis=1)
        keep = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, keep, 1)
        best_i = np.take_along_axis(cand_i, keep, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


# ----------------------------------------------------------------------------- workers
def sweep(search, queries: np.ndarray, gt: np.ndarray) -> list[dict]:
    search(queries[:10], 16)
    curve = []
    for ef in EFS:
        labels = search(queries, ef)
        secs = median_time(lambda: search(queries, ef))
        curve.append({"ef": ef, "recall": recall_at_k(labels, gt), "qps": len(queries) / secs})
        if curve[-1]["recall"] >= 0.99:
            break
    return curve


def worker(spec: dict) -> dict:
    rows = np.load(spec["rows"], mmap_mode="r")  # (a collection reads it batch by batch)
    queries = np.load(spec["queries"])
    gt = np.load(spec["gt"])
    n, dim = rows.shape
    out: dict = {"engine": spec["engine"], "n": n}
    rss0 = rss_now()
    reset_peak()
    if spec["engine"] == "hnswlib":
        import hnswlib

        ref = hnswlib.Index(space="ip", dim=dim)
        ref.init_index(max_elements=n, ef_construction=64, M=16, random_seed=0)
        ref.set_num_threads(2)
        t = time.perf_counter()
        ref.add_items(rows)
        out["build_s"] = time.perf_counter() - t
        out["build_peak_rss_delta"] = rss_peak() - rss0
        ref.set_num_threads(1)

        def search(q, ef):
            ref.set_ef(max(ef, 10))
            return ref.knn_query(q, 10)[0]
        out["curve"] = sweep(search, queries, gt)
        return out

    import shoal

    shoal.Index(dim).add(rows[:2000])  # compile outside the clock
    if spec["engine"] == "index":
        index = shoal.Index(dim, "cosine", seed=0)
        t = time.perf_counter()
        index.add(rows, num_threads=2)
        out["build_s"] = time.perf_counter() - t
        out["build_peak_rss_delta"] = rss_peak() - rss0
        out["index_bytes"] = index.stats()["memory_bytes"]
        out["curve"] = sweep(lambda q, ef: index.search(q, 10, ef=ef, num_threads=1)[0], queries, gt)
        out["default"], out["calibrate_s"], out["learned"] = default_recall(index, queries, gt, 2)
        return out

    # the collection: durable ingest with payloads and two payload indexes
    folder = tempfile.mkdtemp(dir=spec.get("tmp"))
    try:
        db = shoal.open(folder)
        col = db.create_collection("rows", dim=dim, metric="cosine", on_disk=spec["engine"] == "on-disk")
        col.create_payload_index("group")
        col.create_payload_index("tag")
        lat = []
        t0 = time.perf_counter()
        for lo in range(0, n, BATCH):
            ids = list(range(lo, min(lo + BATCH, n)))
            payloads = [{"group": i % 100, "tag": f"t{i % 7}"} for i in ids]
            t = time.perf_counter()
            col.upsert(ids, rows[lo:lo + BATCH], payloads)
            lat.append(time.perf_counter() - t)
        out["ingest_s"] = time.perf_counter() - t0
        del rows  # (its mapped pages would count as this process's)
        t = time.perf_counter()
        col.checkpoint()
        out["final_checkpoint_s"] = time.perf_counter() - t
        out["ingest_peak_rss_delta"] = rss_peak() - rss0
        lat_ms = np.array(lat) * 1e3
        out["upsert_ms"] = {"median": float(np.median(lat_ms)), "p99": float(np.percentile(lat_ms, 99)),
                            "max": float(lat_ms.max()), "over_100ms": int((lat_ms > 100).sum())}
        stats = col.stats()
        out["segments"] = len(stats["segments"])
        cps = stats["checkpoints"]
        out["checkpoints"] = {"count": len(cps), "rows": [c["rows"] for c in cps],
                              "stop_s_max": max((c["begin"] + c["end"] for c in cps), default=0.0),
                              "write_s": [c.get("write", 0.0) for c in cps],
                              # the parts of the longest stop: repair, SQLite's durable commit
                              # and log copy (store), log restart (log)
                              "longest": max(cps, key=lambda c: c["begin"] + c["end"], default=None)}
        out["rss_after_ingest"] = rss_parts()
        db.close()
        out["disk_bytes"] = sum(f.stat().st_blocks * 512 for f in Path(folder).rglob("*") if f.is_file())
        t = time.perf_counter()
        db = shoal.open(folder)
        col = db.get_collection("rows")
        col.search(queries[0], k=10)
        out["reopen_first_query_s"] = time.perf_counter() - t
        if spec.get("ef") is None:  # no Index in this run: the collection's own sweep
            out["curve"] = sweep(lambda q, ef: np.array([[h.id for h in r] for r in col.search(
                q, k=10, ef=ef, with_payload=False, num_threads=1)]), queries, gt)
            out["qps_at_095"] = qps_at(out["curve"])
        ef = spec.get("ef") or next((p["ef"] for p in out["curve"] if p["recall"] >= 0.95), EFS[-1])
        found = np.array([[h.id for h in r] for r in col.search(queries, k=10, ef=ef, with_payload=False,
                                                                   num_threads=1)])
        out["at_ef"] = {"ef": ef, "recall": recall_at_k(found, gt),
                        "qps": len(queries) / median_time(lambda: col.search(
                            queries, k=10, ef=ef, with_payload=False, num_threads=1))}
        one = []
        for q in queries:
            t = time.perf_counter()
            col.search(q, k=10, ef=ef, with_payload=False)
            one.append(time.perf_counter() - t)
        out["single_query_us"] = {"median": float(np.median(one) * 1e6),
                                  "p99": float(np.percentile(one, 99) * 1e6)}
        out["rss_after_search"] = rss_parts()
        db.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def run_worker(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['engine']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(FULL))
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "shoal-bench"))
    ap.add_argument("--engines", default="index,hnswlib,collection",
                    help="of index, hnswlib, collection, on-disk (a collection with on_disk=True)")
    ap.add_argument("--on-disk", action="store_true", help="add the on-disk engine")
    ap.add_argument("--worker")
    args = ap.parse_args(argv)
    engines = args.engines.split(",") + (["on-disk"] if args.on_disk else [])
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker)), default=float))
        return 0
    ds = load_dataset(args.dataset)
    cache = Path(args.cache)
    nbrs = real_neighbours(ds.base, cache)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {"dataset": args.dataset, "construction": {"neighbours": NEIGHBOURS, "noise": NOISE},
                     "sizes": {}}
    work = Path(tempfile.mkdtemp(dir=cache))
    try:
        np.save(work / "queries.npy", ds.queries)
        for n in sizes:
            rows = make_rows(ds.base, nbrs, n)
            np.save(work / "rows.npy", rows)
            np.save(work / "gt.npy", truth(ds.queries, rows))
            del rows
            spec = {"rows": str(work / "rows.npy"), "queries": str(work / "queries.npy"),
                    "gt": str(work / "gt.npy"), "tmp": str(work)}
            res = {e: run_worker({**spec, "engine": e}) for e in ("index", "hnswlib") if e in engines}
            ef95 = None
            if "index" in res:
                ef95 = next((p["ef"] for p in res["index"]["curve"] if p["recall"] >= 0.95), EFS[-1])
            for e in ("collection", "on-disk"):
                if e in engines:
                    res[e] = run_worker({**spec, "engine": e, "ef": ef95})
            for e in ("index", "hnswlib"):
                if e in res:
                    res[e]["qps_at_095"] = qps_at(res[e]["curve"])
            results["sizes"][n] = res
            print(json.dumps({"n": n, **{e: {k: v for k, v in r.items() if k != "curve"} for e, r in res.items()}},
                             default=float), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, "scale", table(results), results)
    return 0


def table(results: dict) -> list[str]:
    def f(x, spec="{:,.0f}"):
        return "n/a" if x is None else spec.format(x)
    lines = ["Rows made from WordNet (see benchmarks/bench_scale.py); 2 threads to build, 1 to search.", "",
             "| rows | Index.add vs hnswlib | collection ingest vs Index.add | QPS@0.95 vs hnswlib | "
             "upsert ms median / p99 / worst | checkpoints: writer stopped, longest s | final checkpoint s | "
             "reopen + 1st query s | 1 query via collection us median / p99 | "
             "peak RSS build (Index / hnswlib) GB | disk GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    full = {n: r for n, r in results["sizes"].items() if {"index", "hnswlib", "collection"} <= set(r)}
    for n, r in full.items():
        ix, hn, col = r["index"], r["hnswlib"], r["collection"]
        q_ratio = ix["qps_at_095"] / hn["qps_at_095"] if ix["qps_at_095"] and hn["qps_at_095"] else None
        u = col["upsert_ms"]
        lines.append(
            f"| {int(n):,} | {hn['build_s'] / ix['build_s']:.2f}x ({int(n) / ix['build_s']:,.0f} vec/s) | "
            f"{ix['build_s'] / col['ingest_s']:.2f}x ({int(n) / col['ingest_s']:,.0f} vec/s) | "
            f"{f(q_ratio, '{:.2f}x')} ({f(ix['qps_at_095'])} vs {f(hn['qps_at_095'])}) | "
            f"{u['median']:.1f} / {u['p99']:.1f} / {u['max']:.0f} | "
            f"{col['checkpoints']['count']}, {col['checkpoints']['stop_s_max']:.2f} | {col['final_checkpoint_s']:.2f} | "
            f"{col['reopen_first_query_s']:.2f} | {col['single_query_us']['median']:.0f} / "
            f"{col['single_query_us']['p99']:.0f} | {ix['build_peak_rss_delta'] / 1e9:.2f} / "
            f"{hn['build_peak_rss_delta'] / 1e9:.2f} | {col['disk_bytes'] / 1e9:.2f} |")
    lines += ["", "Collection search at the ef where the Index reached 0.95, and the Index's calibrated default:", ""]
    for n, r in full.items():
        a = r["collection"]["at_ef"]
        d, lw = r["index"]["default"], r["index"]["learned"]
        lines.append(f"- {int(n):,} rows: collection ef={a['ef']} recall {a['recall']:.3f} at {a['qps']:,.0f} QPS; "
                     f"Index default calibrated on rows ef={d['ef']} recall {d['recall']:.3f} (calibration "
                     f"{r['index']['calibrate_s']:.1f} s), after learning the even-numbered queries ef={lw['ef']} "
                     f"recall {lw['recall']:.3f} on the odd ones; {r['collection']['segments']} segment(s)")
    if any("on-disk" in r for r in results["sizes"].values()):
        lines += ["", "Vectors on disk (`on_disk=True`) vs in RAM, same rows, same run; resident memory after "
                  "the searches (own / mapped-file pages):", "",
                  "| rows | ingest vec/s (vs Index.add) | upsert ms median / worst | segments | ef | recall@10 | "
                  "QPS (vs in RAM) | 1 query us median | RSS own GB (in RAM / on disk) | RSS file GB on disk | "
                  "disk GB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in results["sizes"].items():
            if "on-disk" not in r:
                continue
            ix, col, dk = r.get("index"), r.get("collection"), r["on-disk"]
            vs_ix = f" ({ix['build_s'] / dk['ingest_s']:.2f}x)" if ix else ""
            vs_ram = f" ({dk['at_ef']['qps'] / col['at_ef']['qps']:.2f}x)" if col else ""
            ram_rss = f"{col['rss_after_search']['anon'] / 1e9:.2f}" if col else "n/a"
            lines.append(
                f"| {int(n):,} | {int(n) / dk['ingest_s']:,.0f}{vs_ix} | {dk['upsert_ms']['median']:.0f} / "
                f"{dk['upsert_ms']['max']:.0f} | {dk['segments']} | {dk['at_ef']['ef']} | {dk['at_ef']['recall']:.3f} | "
                f"{dk['at_ef']['qps']:,.0f}{vs_ram} | {dk['single_query_us']['median']:.0f} | "
                f"{ram_rss} / {dk['rss_after_search']['anon'] / 1e9:.2f} | "
                f"{dk['rss_after_search']['file'] / 1e9:.2f} | {dk['disk_bytes'] / 1e9:.2f} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
