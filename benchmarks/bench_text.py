"""Texts in, answers out (issue 13): vector, keyword and hybrid search on a known-item task
built from WordNet, with the default offline embedder.

The task (``make_task``): WordNet glosses hold example sentences (``crack: ...; "the glass
cracked when it was heated"``). A query is one example sentence of a synset in which one of
the synset's own lemmas appears, with every word that starts with that lemma masked (``"the
glass ___ when it was heated"``); the one relevant item is its synset among all 116,659. Two
corpora: the documents as the data set ships them (lemmas, definition and examples; the data
set's own vectors), and a harder one with the examples removed (lemmas and definition only,
embedded again by the default model). 1,000 queries are drawn (seed 0) among the synsets that
have such an example; MRR@10 and recall@10 (the relevant item in the top 10) per mode, with
single-query latency (query vectors embedded beforehand; one query's embedding is timed on
its own).

Also measured: the default embedder's throughput (texts/s, batches of 256), ``import shoal``
time (the model loads at first use), FTS5's build time (ingest with documents against the
same ingest without, same vectors, same run) and size (the payload store's bytes with and
without documents), and a vector-only ingest's ratio to one with documents.

The harder corpus is embedded once and cached (``--cache``); the first run embeds 116,659
texts (about 13 minutes on 2 cores).

    .venv/bin/python benchmarks/bench_text.py [--dataset DIR] [--queries 1000] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import shoal  # noqa: E402
from bench_core import write_results  # noqa: E402  (same directory)
from shoal.embed import resolve  # noqa: E402

FULL = ROOT.parent / "shared" / "datasets" / "wordnet-minilm-384"
EXAMPLE = re.compile(r'"([^"]+)"')


def make_task(texts: list[str], n_queries: int, seed: int = 0,
              keep_examples: bool = True) -> tuple[list[str], list[str], np.ndarray]:
    """(documents, queries, the relevant document of each query) as described above; without
    ``keep_examples`` the documents lose their example sentences."""
    docs, candidates = [], []
    for i, text in enumerate(texts):
        lemmas, _, gloss = text.partition(": ")
        examples = EXAMPLE.findall(gloss)
        definition = re.sub(r';?\s*"[^"]*"', "", gloss).strip(" ;")
        docs.append(text if keep_examples else f"{lemmas}: {definition}")
        for example in examples:
            for lemma in lemmas.split(", "):
                word = re.compile(r"\b" + re.escape(lemma) + r"\w*", re.IGNORECASE)
                if word.search(example):
                    candidates.append((i, word.sub("___", example)))
                    break
            else:
                continue
            break  # one example per synset
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(candidates), size=min(n_queries, len(candidates)), replace=False)
    return docs, [candidates[p][1] for p in picked], np.array([candidates[p][0] for p in picked])


def embedded(texts: list[str], cache: Path, name: str) -> tuple[np.ndarray, float]:
    """The default model's vectors of ``texts`` (cached by content) and texts/s when made."""
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache / f"{name}-{key}.npy"
    if path.is_file():
        meta = json.loads(path.with_suffix(".json").read_text())
        return np.load(path), meta["texts_per_s"]
    model = resolve("default")
    model.embed(texts[:8], progress=False)  # load the model outside the clock
    t = time.perf_counter()
    x = model.embed(texts, progress=True)
    rate = len(texts) / (time.perf_counter() - t)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    path.with_suffix(".json").write_text(json.dumps({"texts_per_s": rate}))
    return x, rate


def ingest(folder: str, vectors: np.ndarray, docs: list[str] | None, batch: int = 1000) -> tuple[float, "shoal.Collection"]:
    db = shoal.open(folder)
    col = db.create_collection("t", embedding=None, dim=vectors.shape[1])
    t = time.perf_counter()
    for lo in range(0, len(vectors), batch):
        col.upsert(list(range(lo, min(lo + batch, len(vectors)))), vectors[lo:lo + batch],
                   None, None if docs is None else docs[lo:lo + batch])
    col.checkpoint()
    return time.perf_counter() - t, col


def metrics(ranked: list[list[int]], relevant: np.ndarray) -> dict:
    rr, hit = [], []
    for ids, rel in zip(ranked, relevant.tolist()):
        rank = ids.index(rel) + 1 if rel in ids[:10] else None
        rr.append(0.0 if rank is None else 1.0 / rank)
        hit.append(rank is not None)
    return {"mrr@10": float(np.mean(rr)), "recall@10": float(np.mean(hit))}


def import_time(reps: int = 5) -> float:
    runs = []
    for _ in range(reps):
        out = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import shoal; "
                              "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        runs.append(float(out.stdout))
    return float(np.median(runs))


def run_modes(col, queries: list[str], query_x: np.ndarray, relevant: np.ndarray) -> dict:
    col.search(query_x[0], k=10)
    modes = {}
    for mode in ("vector", "keyword", "hybrid"):
        ranked, lat = [], []
        for q, qx in zip(queries, query_x):
            kw = {"text": q} if mode != "vector" else {}
            vec = qx if mode != "keyword" else None
            t = time.perf_counter()
            hits = col.search(vec, k=10, mode=mode, with_payload=False, **kw)
            lat.append(time.perf_counter() - t)
            ranked.append([h.id for h in hits])
        modes[mode] = {**metrics(ranked, relevant), "latency_us_median": float(np.median(lat) * 1e6),
                       "latency_us_p99": float(np.percentile(lat, 99) * 1e6)}
    best = max(modes["vector"]["mrr@10"], modes["keyword"]["mrr@10"])
    modes["hybrid_gain_over_best_half"] = modes["hybrid"]["mrr@10"] / best if best else float("nan")
    return modes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=os.environ.get("SHOAL_DATASET", str(FULL)))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "shoal-bench"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    texts = (Path(args.dataset) / "base_texts.txt").read_text().splitlines()
    base = np.load(Path(args.dataset) / "base.npy").astype(np.float32)
    cache = Path(args.cache)
    out: dict = {"tasks": {}}
    # Task 1, as the data ships: documents with their examples, the data set's own vectors.
    docs, queries, relevant = make_task(texts, args.queries)
    query_x, _ = embedded(queries, cache, "wordnet-queries")
    model = resolve("default")
    sample = docs[:2048]
    model.embed(sample[:8], progress=False)
    t = time.perf_counter()
    model.embed(sample, progress=False)
    rate = len(sample) / (time.perf_counter() - t)
    t = time.perf_counter()
    for q in queries[:50]:
        model.embed_queries([q])
    embed_one_ms = (time.perf_counter() - t) / 50 * 1e3
    out.update({"documents": len(docs), "queries": len(queries), "embed_texts_per_s": rate,
                "embed_one_query_ms": embed_one_ms, "import_shoal_s": import_time()})
    plain_s, plain = ingest(tempfile.mkdtemp(), base, None)
    docs_s, col = ingest(tempfile.mkdtemp(), base, docs)
    size = lambda c: os.path.getsize(c._store.path)  # noqa: E731  (checkpointed: the WAL is copied in)
    out.update({"ingest_vectors_only_s": plain_s, "ingest_with_documents_s": docs_s,
                "documents_cost_ratio": docs_s / plain_s, "payload_store_bytes_without": size(plain),
                "payload_store_bytes_with": size(col), "documents_text_bytes": sum(len(d.encode()) for d in docs)})
    with __import__("sqlite3").connect(col._store.path) as con:
        out["fts_index_bytes"] = con.execute(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name LIKE 'documents_fts%'").fetchone()[0] \
            if _has_dbstat(con) else None
    out["tasks"]["examples kept"] = run_modes(col, queries, query_x, relevant)
    # Task 2, harder: examples removed from the documents (embedded again, cached).
    docs2, queries2, relevant2 = make_task(texts, args.queries, keep_examples=False)
    assert queries2 == queries and (relevant2 == relevant).all()
    doc_x, doc_rate = embedded(docs2, cache, "wordnet-docs")
    out["embed_texts_per_s_corpus_run"] = doc_rate
    _, col2 = ingest(tempfile.mkdtemp(), doc_x, docs2)
    out["tasks"]["examples removed"] = run_modes(col2, queries, query_x, relevant)

    lines = [f"Known-item task from WordNet: {len(queries):,} queries, each an example sentence of a synset "
             f"with the synset's lemma masked; the relevant item is that synset among {len(docs):,}. "
             "One process, one query at a time (query vectors embedded beforehand).", "",
             "| documents | mode | MRR@10 | recall@10 | latency us median / p99 |", "|---|---|---|---|---|"]
    for task, modes in out["tasks"].items():
        for mode in ("vector", "keyword", "hybrid"):
            m = modes[mode]
            lines.append(f"| {task} | {mode} | {m['mrr@10']:.3f} | {m['recall@10']:.3f} | "
                         f"{m['latency_us_median']:,.0f} / {m['latency_us_p99']:,.0f} |")
    lines += ["", "Hybrid MRR@10 against the better half: " + ", ".join(
                  f"{t} {m['hybrid_gain_over_best_half']:.2f}x" for t, m in out["tasks"].items()) + ".",
              f"Default embedder: {rate:,.0f} texts/s (batches of 256, 2,048 WordNet documents; "
              f"{doc_rate:,.0f} texts/s over the corpus when it was embedded), one query "
              f"{embed_one_ms:.1f} ms; `import shoal` {out['import_shoal_s']:.2f} s (no model loaded).",
              f"Ingest with documents vs vectors only (same vectors, batches of 1,000, durable, "
              f"checkpointed): {docs_s:.1f} s vs {plain_s:.1f} s ({out['documents_cost_ratio']:.2f}x); "
              f"payload store {out['payload_store_bytes_with'] / 1e6:.1f} MB with documents vs "
              f"{out['payload_store_bytes_without'] / 1e6:.1f} MB without (document text "
              f"{out['documents_text_bytes'] / 1e6:.1f} MB"
              + (f", FTS5 index {out['fts_index_bytes'] / 1e6:.1f} MB)." if out["fts_index_bytes"] else ").")]
    write_results(args.out, "text", lines, out)
    return 0


def _has_dbstat(con) -> bool:
    try:
        con.execute("SELECT 1 FROM dbstat LIMIT 1")
        return True
    except Exception:  # noqa: BLE001 - SQLite built without the dbstat table
        return False


if __name__ == "__main__":
    raise SystemExit(main())
