"""Sharded collections on a local Ray (issue 6), every figure a ratio measured in the same run.

- recall parity: 4 shards against one embedded collection, recall@10 at ef 32 and 64;
- build: ingest throughput of 2 shards built in parallel against 1 shard, one numba thread
  per shard, the same batches of 10,000 (``import_arrays``);
- search overhead: batch QPS of a 1-shard Ray collection against the embedded collection;
- costs for a model beyond one machine: per-shard search time (inside the actor) at 1, 2 and
  4 shards of the same data, and what the driver adds (routing, serialization, merging).

    .venv/bin/python benchmarks/bench_ray.py [--dataset DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import shoal  # noqa: E402
import shoal.ray as sray  # noqa: E402
from bench_core import median_time, write_results  # noqa: E402  (same directory)
from shoal.datasets import FULL, load_dataset, recall_at_k  # noqa: E402


def ids(results) -> np.ndarray:
    return np.array([[h.id for h in r] + [-1] * (10 - len(r)) for r in results])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(FULL))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    ds = load_dataset(args.dataset)
    n = len(ds.base)
    res: dict = {"n": n}
    lines = [f"Dataset {Path(args.dataset).name}: {n:,} vectors, {len(ds.queries):,} queries as one batch, "
             "k=10; a local Ray on this machine (2 cores).", ""]
    tmp = tempfile.mkdtemp()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # embedded reference
        db = shoal.open(f"{tmp}/one")
        one = db.create_collection("w", dim=ds.base.shape[1])
        t = time.perf_counter()
        for lo in range(0, n, 10_000):
            one.upsert(list(range(lo, min(lo + 10_000, n))), ds.base[lo:lo + 10_000])
        res["embedded_ingest_vec_s"] = n / (time.perf_counter() - t)

        # build: 1 shard vs 2 shards, one thread each
        rates = {}
        cols = {}
        for shards in (1, 2, 4):
            col = sray.create_collection(f"s{shards}", dim=ds.base.shape[1], shards=shards,
                                         path=f"{tmp}/ray", threads=1)
            t = time.perf_counter()
            col.import_arrays(ds.base, batch_size=10_000, progress=False)
            rates[shards] = n / (time.perf_counter() - t)
            cols[shards] = col
        res["ingest_vec_s"] = rates
        # search overhead: one shard with the machine's threads, as the embedded collection has
        full = sray.create_collection("full", dim=ds.base.shape[1], shards=1, path=f"{tmp}/ray")
        full.import_arrays(ds.base, batch_size=10_000, progress=False)
        lines += ["| shards (1 thread each) | ingest vec/s | vs 1 shard |", "|---|---|---|"]
        lines += [f"| {s} | {r:,.0f} | {r / rates[1]:.2f}x |" for s, r in rates.items()]

        # recall parity and search
        lines += ["", "| collection | ef | recall@10 | batch QPS | vs embedded |", "|---|---|---|---|---|"]
        res["search"] = []
        for ef in (32, 64):
            emb_s = median_time(lambda: one.search(ds.queries, k=10, ef=ef, with_payload=False), args.reps)
            emb_r = recall_at_k(ids(one.search(ds.queries, k=10, ef=ef, with_payload=False)), ds.gt)
            lines.append(f"| embedded | {ef} | {emb_r:.3f} | {len(ds.queries) / emb_s:,.0f} | 1.00x |")
            for shards, col in cols.items():
                col.search(ds.queries[:10], k=10, ef=ef)
                s = median_time(lambda: col.search(ds.queries, k=10, ef=ef, with_payload=False), args.reps)
                r = recall_at_k(ids(col.search(ds.queries, k=10, ef=ef, with_payload=False)), ds.gt)
                res["search"].append({"shards": shards, "ef": ef, "recall": r, "qps": len(ds.queries) / s,
                                      "embedded_qps": len(ds.queries) / emb_s, "embedded_recall": emb_r})
                lines.append(f"| Ray, {shards} shard{'s' if shards > 1 else ''} (1 thread each) | {ef} | {r:.3f} | "
                             f"{len(ds.queries) / s:,.0f} | {emb_s / s:.2f}x |")

        for ef in (32, 64):
            emb_s = median_time(lambda: one.search(ds.queries, k=10, ef=ef, with_payload=False), args.reps)
            full.search(ds.queries[:10], k=10, ef=ef)
            s = median_time(lambda: full.search(ds.queries, k=10, ef=ef, with_payload=False), args.reps)
            r = recall_at_k(ids(full.search(ds.queries, k=10, ef=ef, with_payload=False)), ds.gt)
            res["search"].append({"shards": 1, "threads": "all", "ef": ef, "recall": r,
                                  "qps": len(ds.queries) / s, "embedded_qps": len(ds.queries) / emb_s})
            lines.append(f"| Ray, 1 shard (2 threads, as embedded) | {ef} | {r:.3f} | "
                         f"{len(ds.queries) / s:,.0f} | {emb_s / s:.2f}x |")
        full.close()

        # costs: time inside each shard vs the driver's total, at ef=64
        lines += ["", "| shards | per-shard search s (max / mean) | driver total s | driver overhead s |",
                  "|---|---|---|---|"]
        res["costs"] = []
        q = ds.queries / np.linalg.norm(ds.queries, axis=1, keepdims=True)
        for shards, col in cols.items():
            inside, total = [], []
            for _ in range(args.reps):
                t = time.perf_counter()
                got = ray.get([a.timed.remote("search_rows", q, 10, None, 64, False, False) for a in col._actors])
                total.append(time.perf_counter() - t)
                inside.append([g[1] for g in got])
            i = int(np.argsort(total)[len(total) // 2])
            t_drv = median_time(lambda: col.search(ds.queries, k=10, ef=64, with_payload=False), args.reps)
            row = {"shards": shards, "inside_max": max(inside[i]), "inside_mean": float(np.mean(inside[i])),
                   "gather_total": total[i], "search_total": t_drv}
            res["costs"].append(row)
            lines.append(f"| {shards} | {row['inside_max']:.3f} / {row['inside_mean']:.3f} | {t_drv:.3f} | "
                         f"{t_drv - row['inside_max']:.3f} |")
        for col in cols.values():
            col.close()
        db.close()
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    write_results(args.out, "ray", lines, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
