"""The database against its core on the real sets (issue 12), in one process, same run:

- ingest: ``Index.add`` of every row (2 threads, one call) against durable ingest into a new
  collection (``upsert`` of 1,000 rows with their payloads, fsync per upsert, payload indexes
  on two fields), alternating, ``--reps`` times each; the ratio of the medians;
- batch search (1 thread, the 1,000 queries as one batch) at the beam where the Index reaches
  recall@10 0.95: the collection (ids only) against that Index;
- a single query (``k=10``, that beam): its latency through the collection, through the Index
  and through hnswlib (M=16, ef_construction=64, at the beam where it reaches 0.95), the
  three taking turns query by query; median and p99.

    .venv/bin/python benchmarks/bench_ingest.py [--datasets DIR,DIR] [--reps 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import shoal  # noqa: E402
from bench_core import median_time, write_results  # noqa: E402  (same directory)
from shoal.datasets import load_dataset, recall_at_k  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
EFS = (16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256)


def ingest(base: np.ndarray, payloads: list[dict], fields: list[str]) -> tuple[float, "shoal.Database", str]:
    folder = tempfile.mkdtemp()
    db = shoal.open(folder)
    col = db.create_collection("c", dim=base.shape[1], metric="cosine")
    for field in fields:
        col.create_payload_index(field)
    t = time.perf_counter()
    for lo in range(0, len(base), 1000):
        col.upsert(list(range(lo, min(lo + 1000, len(base)))), base[lo:lo + 1000], payloads[lo:lo + 1000])
    return time.perf_counter() - t, db, folder


def ef_for(search, queries, gt, target=0.95) -> int:
    for ef in EFS:
        if recall_at_k(search(queries, ef), gt) >= target:
            return ef
    return EFS[-1]


def run(dataset: Path, reps: int) -> dict:
    ds = load_dataset(dataset)
    payloads = [json.loads(line) for line in open(dataset / "base_payloads.jsonl")]
    fields = list(payloads[0])[:2]
    n = len(ds.base)
    shoal.Index(ds.base.shape[1]).add(ds.base[:2000])  # compile outside the clock
    add_s, ingest_s = [], []
    index = db = folder = None
    for _ in range(reps):
        if db is not None:
            db.close()
            shutil.rmtree(folder, ignore_errors=True)
        index = shoal.Index(ds.base.shape[1], "cosine")
        t = time.perf_counter()
        index.add(ds.base, num_threads=2)
        add_s.append(time.perf_counter() - t)
        secs, db, folder = ingest(ds.base, payloads, fields)
        ingest_s.append(secs)
    col = db.get_collection("c")
    out: dict = {"dataset": dataset.name, "n": n, "payload_indexes": fields,
                 "index_add_s": add_s, "ingest_s": ingest_s,
                 "ingest_ratio": float(np.median(add_s) / np.median(ingest_s))}

    ef = ef_for(lambda q, e: index.search(q, 10, ef=e, num_threads=1)[0], ds.queries, ds.gt)
    ids = lambda rows: np.array([[h.id for h in r] + [-1] * (10 - len(r)) for r in rows])  # noqa: E731
    col_secs = median_time(lambda: col.search(ds.queries, k=10, ef=ef, with_payload=False, num_threads=1), reps)
    ix_secs = median_time(lambda: index.search(ds.queries, 10, ef=ef, num_threads=1), reps)
    out["batch"] = {"ef": ef, "index_recall": recall_at_k(index.search(ds.queries, 10, ef=ef, num_threads=1)[0], ds.gt),
                    "collection_recall": recall_at_k(ids(col.search(ds.queries, k=10, ef=ef, with_payload=False,
                                                                    num_threads=1)), ds.gt),
                    "collection_qps": len(ds.queries) / col_secs, "index_qps": len(ds.queries) / ix_secs}

    import hnswlib

    ref = hnswlib.Index(space="ip", dim=ds.base.shape[1])
    ref.init_index(max_elements=n, ef_construction=64, M=16, random_seed=0)
    ref.set_num_threads(2)
    ref.add_items(ds.base / np.linalg.norm(ds.base, axis=1, keepdims=True))
    ref.set_num_threads(1)

    def hnsw(q, e):
        ref.set_ef(max(e, 10))
        return ref.knn_query(q, 10)[0]
    hef = ef_for(hnsw, ds.queries, ds.gt)
    ref.set_ef(hef)
    one = {"collection": [], "index": [], "hnswlib": []}
    calls = {"collection": lambda q: col.search(q, k=10, ef=ef, with_payload=False),
             "index": lambda q: index.search(q, 10, ef=ef), "hnswlib": lambda q: ref.knn_query(q, 10)}
    for q in ds.queries[:50]:
        for call in calls.values():
            call(q)
    for _ in range(reps):
        for q in ds.queries:
            for name, call in calls.items():
                t = time.perf_counter()
                call(q)
                one[name].append(time.perf_counter() - t)
    out["single_query_us"] = {name: {"median": float(np.median(v) * 1e6), "p99": float(np.percentile(v, 99) * 1e6)}
                              for name, v in one.items()}
    out["single_query_us"]["hnswlib"]["ef"] = hef
    db.close()
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(str(SHARED / d) for d in ("wordnet-minilm-384", "pkg-minilm-384")))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    results = [run(Path(d), args.reps) for d in args.datasets.split(",")]
    lines = [f"Medians of {args.reps} runs each, alternating, one process per set; 2 threads to build, 1 to search.", "",
             "| set | ingest vs Index.add (vec/s) | batch QPS: collection vs Index (ef, recall) | "
             "1 query us median / p99: collection, Index, hnswlib (its ef) |", "|---|---|---|---|"]
    for r in results:
        b, s = r["batch"], r["single_query_us"]
        lines.append(
            f"| {r['dataset']} | {r['ingest_ratio']:.2f}x ({r['n'] / np.median(r['ingest_s']):,.0f} vs "
            f"{r['n'] / np.median(r['index_add_s']):,.0f}) | {b['collection_qps'] / b['index_qps']:.2f}x "
            f"({b['collection_qps']:,.0f} vs {b['index_qps']:,.0f}; ef={b['ef']}, {b['collection_recall']:.3f} / "
            f"{b['index_recall']:.3f}) | {s['collection']['median']:.0f} / {s['collection']['p99']:.0f}, "
            f"{s['index']['median']:.0f} / {s['index']['p99']:.0f}, {s['hnswlib']['median']:.0f} / "
            f"{s['hnswlib']['p99']:.0f} (ef={s['hnswlib']['ef']}) |")
    write_results(args.out, "ingest", lines, {"runs": results})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
