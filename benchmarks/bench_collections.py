"""shoal collections on WordNet: durable ingest, segmented search, filtered search, reopen.

Protocol (issue 4), each figure a ratio to a peer measured in the same run:
- ingest: upsert all base vectors with their payloads in batches of 1,000, durable (fsync per
  batch), with payload indexes on ``pos`` and ``lexname``, to a searchable state; against hnswlib
  ``add_items`` (M=16, ef_construction=64, 2 threads, all vectors in one call) and chromadb
  (the same batches and payloads, a persistent client);
- search over the collection as ingest left it (one active segment), after ``compact()``, and
  sealed into three segments: recall@10 and QPS (1 thread, the queries as one batch) against a
  single ``shoal.Index`` over the same data;
- filtered search on the payloads (part of speech, lexicographer files) at about 50%, 10%,
  1% and 0.1% selectivity, against exact filtered ground truth;
- reopening the database and answering a first query.

    .venv/bin/python benchmarks/bench_collections.py [--dataset DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import shoal  # noqa: E402
from bench_core import median_time, write_results  # noqa: E402  (same directory)
from shoal.datasets import FULL, load_dataset, recall_at_k  # noqa: E402


def hit_ids(results) -> np.ndarray:
    return np.array([[h.id for h in r] + [-1] * (10 - len(r)) for r in results])


def filters_by_selectivity(payloads: list[dict]) -> list[tuple[str, dict, np.ndarray]]:
    n = len(payloads)
    lex = Counter(p["lexname"] for p in payloads)
    out = []
    # about 50%: nouns are 70%, so take nouns in the first half of the lexicographer files
    names = sorted(n_ for n_ in lex if n_.startswith("noun."))
    half, acc = [], 0
    for name in names:
        if acc + lex[name] > 0.5 * n:
            continue
        half.append(name)
        acc += lex[name]
    out.append(("~50%", {"lexname": {"$in": half}}, np.array([p["lexname"] in half for p in payloads])))
    for share in (0.1, 0.01, 0.001):
        name = min(lex, key=lambda k: abs(lex[k] / n - share))
        out.append((f"~{share:.1%}", {"lexname": name}, np.array([p["lexname"] == name for p in payloads])))
    return out


def chroma_ingest(base: np.ndarray, payloads: list[dict]) -> float | None:
    """chromadb's ingest rate for the same batches (a persistent client, telemetry off)."""
    try:
        import chromadb
        from chromadb.config import Settings
    except ImportError:
        print("chromadb is not installed: no chromadb comparison")
        return None
    tmp = tempfile.mkdtemp()
    try:
        client = chromadb.PersistentClient(path=tmp, settings=Settings(anonymized_telemetry=False))
        col = client.create_collection("wordnet", metadata={"hnsw:space": "cosine"}, embedding_function=None)
        t = time.perf_counter()
        for lo in range(0, len(base), 1000):
            hi = min(lo + 1000, len(base))
            col.add(ids=[str(i) for i in range(lo, hi)], embeddings=base[lo:hi], metadatas=payloads[lo:hi])
        return len(base) / (time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(FULL))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    ds = load_dataset(args.dataset)
    payloads = [json.loads(line) for line in open(Path(args.dataset) / "base_payloads.jsonl")]
    n = len(ds.base)
    results: dict = {"dataset": args.dataset, "n": n}
    lines = [f"Dataset {Path(args.dataset).name}: {n:,} vectors with payloads.", ""]

    shoal.Index(ds.base.shape[1]).add(ds.base[:2000])  # load the kernels once
    tmp = tempfile.mkdtemp()
    try:
        db = shoal.open(tmp)
        col = db.create_collection("wordnet", dim=ds.base.shape[1], metric="cosine")
        for field in ("pos", "lexname"):  # the fields the filters below use, as a user would
            col.create_payload_index(field)
        t = time.perf_counter()
        for lo in range(0, n, 1000):
            col.upsert(list(range(lo, min(lo + 1000, n))), ds.base[lo:lo + 1000], payloads[lo:lo + 1000])
        ingest = n / (time.perf_counter() - t)

        import hnswlib

        ref = hnswlib.Index(space="ip", dim=ds.base.shape[1])
        ref.init_index(max_elements=n, ef_construction=64, M=16, random_seed=0)
        ref.set_num_threads(2)
        t = time.perf_counter()
        ref.add_items(ds.base)
        hn = n / (time.perf_counter() - t)
        chroma = chroma_ingest(ds.base, payloads)
        results["ingest"] = {"shoal_vec_per_s": ingest, "hnswlib_vec_per_s": hn, "ratio": ingest / hn,
                             "chromadb_vec_per_s": chroma, "state_after": col.stats()}
        lines += [f"Ingest (durable, batches of 1,000, with payloads): {ingest:,.0f} vec/s = "
                  f"{ingest / hn:.2f}x hnswlib add_items ({hn:,.0f} vec/s)"
                  + (f" and {ingest / chroma:.2f}x chromadb ({chroma:,.0f} vec/s, same batches and payloads)"
                     if chroma else "") + " in the same run.", ""]

        index = shoal.Index(ds.base.shape[1])
        index.add(ds.base)
        lines += ["| collection state | ef | recall@10 | QPS | QPS vs one Index |", "|---|---|---|---|---|"]
        results["search"] = []
        for state in ("after ingest", "after compact()"):
            if state == "after compact()":
                col.compact()
            for ef in (32, 64):
                col.search(ds.queries[:10], k=10, ef=ef)
                secs = median_time(lambda: col.search(ds.queries, k=10, ef=ef, with_payload=False, num_threads=1))
                found = hit_ids(col.search(ds.queries, k=10, ef=ef, with_payload=False, num_threads=1))
                base_secs = median_time(lambda: index.search(ds.queries, 10, ef=ef, num_threads=1))
                row = {"state": state, "ef": ef, "recall": recall_at_k(found, ds.gt),
                       "qps": len(ds.queries) / secs, "index_qps": len(ds.queries) / base_secs}
                results["search"].append(row)
                lines.append(f"| {state} | {ef} | {row['recall']:.3f} | {row['qps']:,.0f} | "
                             f"{row['qps'] / row['index_qps']:.2f}x |")

        # The same data sealed into three segments (a small seal size forces them): what a
        # search over several segments costs against one.
        seg_dir = tempfile.mkdtemp()
        try:
            with shoal.open(seg_dir, policy=shoal.Policy(seal_rows=40_000)) as db3:
                col3 = db3.create_collection("wordnet", dim=ds.base.shape[1], metric="cosine")
                for lo in range(0, n, 1000):
                    col3.upsert(list(range(lo, min(lo + 1000, n))), ds.base[lo:lo + 1000])
                nseg = len(col3.stats()["segments"])
                for ef in (32, 64):
                    secs = median_time(lambda: col3.search(ds.queries, k=10, ef=ef, with_payload=False, num_threads=1))
                    found = hit_ids(col3.search(ds.queries, k=10, ef=ef, with_payload=False, num_threads=1))
                    base_secs = median_time(lambda: index.search(ds.queries, 10, ef=ef, num_threads=1))
                    row = {"state": f"{nseg} segments", "ef": ef, "recall": recall_at_k(found, ds.gt),
                           "qps": len(ds.queries) / secs, "index_qps": len(ds.queries) / base_secs}
                    results["search"].append(row)
                    lines.append(f"| {nseg} segments (sealed at 40,000 rows) | {ef} | {row['recall']:.3f} | "
                                 f"{row['qps']:,.0f} | {row['qps'] / row['index_qps']:.2f}x |")
        finally:
            shutil.rmtree(seg_dir, ignore_errors=True)

        lines += ["", "| filter | selectivity | recall@10 | QPS |", "|---|---|---|---|"]
        results["filtered"] = []
        unit = ds.base / np.linalg.norm(ds.base, axis=1, keepdims=True)
        sims = ds.queries @ unit.T
        for label, flt, mask in filters_by_selectivity(payloads):
            gt = np.argsort(-np.where(mask[None, :], sims, -np.inf), axis=1)[:, :10]
            secs = median_time(lambda: col.search(ds.queries, k=10, ef=64, filter=flt, with_payload=False, num_threads=1))
            found = hit_ids(col.search(ds.queries, k=10, ef=64, filter=flt, with_payload=False, num_threads=1))
            row = {"label": label, "filter": flt, "selectivity": float(mask.mean()),
                   "recall": recall_at_k(found, gt), "qps": len(ds.queries) / secs}
            results["filtered"].append(row)
            lines.append(f"| {json.dumps(flt)[:60]} | {row['selectivity']:.2%} | {row['recall']:.3f} | {row['qps']:,.0f} |")
        db.close()

        t = time.perf_counter()
        db = shoal.open(tmp)
        db.get_collection("wordnet").search(ds.queries[0], k=10)
        reopen = time.perf_counter() - t
        db.close()
        results["reopen_first_query_s"] = reopen
        lines += ["", f"Reopen the database and answer a first query: {reopen:.2f} s."]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_results(args.out, "collections", lines, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
