"""Batch search over HTTP against the same search embedded (issue 5).

A collection of the dataset's base vectors (with payloads) is built embedded and closed; a real
`shoal serve` process then serves it on a free port of 127.0.0.1, and ``shoal.Client`` sends
the 1,000 queries as one batch request (JSON both ways; the vectors as lists of numbers, or as
base64 float32 inside the JSON). The embedded figure is the same
database opened read-only in this process, the same batch call. Medians of ``--reps`` runs.

    .venv/bin/python benchmarks/bench_server.py [--dataset DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import shoal  # noqa: E402
from bench_core import median_time, write_results  # noqa: E402  (same directory)
from shoal.datasets import FULL, load_dataset, recall_at_k  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(FULL))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    ds = load_dataset(args.dataset)
    payloads = [json.loads(line) for line in open(Path(args.dataset) / "base_payloads.jsonl")]
    n = len(ds.base)
    tmp = tempfile.mkdtemp()
    proc = None
    try:
        with shoal.open(tmp) as db:
            col = db.create_collection("wordnet", dim=ds.base.shape[1])
            for lo in range(0, n, 1000):
                col.upsert(list(range(lo, min(lo + 1000, n))), ds.base[lo:lo + 1000], payloads[lo:lo + 1000])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        exe = Path(sys.executable).with_name("shoal")
        proc = subprocess.Popen([str(exe), "serve", tmp, "--port", str(port), "--read-only"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        rows, lines = [], [f"Dataset {Path(args.dataset).name}: {n:,} vectors; {len(ds.queries):,} queries "
                           "as one batch, k=10.", "",
                           "| vectors sent as | with_payload | embedded QPS | HTTP QPS | HTTP / embedded | recall@10 (HTTP) |",
                           "|---|---|---|---|---|---|"]
        local = shoal.open(tmp, read_only=True)
        clients = {enc: shoal.Client(url, vector_encoding=enc) for enc in ("json", "base64")}
        try:
            lcol = local.get_collection("wordnet")
            for (enc, client), with_payload in [(c, p) for c in clients.items() for p in (False, True)]:
                rcol = client.get_collection("wordnet")
                lcol.search(ds.queries[:10], k=10)
                rcol.search(ds.queries[:10], k=10)
                emb = median_time(lambda: lcol.search(ds.queries, k=10, with_payload=with_payload), args.reps)
                http = median_time(lambda: rcol.search(ds.queries, k=10, with_payload=with_payload), args.reps)
                found = rcol.search(ds.queries, k=10, with_payload=with_payload)
                import numpy as np

                ids = np.array([[h.id for h in r] + [-1] * (10 - len(r)) for r in found])
                row = {"encoding": enc, "with_payload": with_payload, "embedded_qps": len(ds.queries) / emb,
                       "http_qps": len(ds.queries) / http, "ratio": emb / http,
                       "recall": recall_at_k(ids, ds.gt)}
                rows.append(row)
                lines.append(f"| {'lists of numbers' if enc == 'json' else 'base64 float32'} | "
                             f"{with_payload} | {row['embedded_qps']:,.0f} | {row['http_qps']:,.0f} | "
                             f"{row['ratio']:.2f}x | {row['recall']:.3f} |")
        finally:
            for client in clients.values():
                client.close()
            local.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    write_results(args.out, "server", lines, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
