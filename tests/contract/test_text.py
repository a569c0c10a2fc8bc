"""Documents, text queries, keyword (BM25) and hybrid search: the same behaviour embedded,
remote and sharded, checked against brute-force models on small data."""

from __future__ import annotations

import math
import re
import threading
import zlib
from collections import Counter

import numpy as np
import pytest

import shoal
from shoal.db import contract

DIM = 16
# Words the FTS5 tokenizer keeps as they are (lower case, no suffix the stemmer strips), so
# that the model below can tokenize as FTS5 does.
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta", "zeta", "iota",
         "rho", "tau", "chi", "psi", "eta", "nu", "xi", "pi", "mu", "lambda"]


def embed(texts):
    """A deterministic bag-of-words embedding (each word a fixed random direction)."""
    out = np.zeros((len(texts), DIM), np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            out[i] += np.random.default_rng(zlib.crc32(word.encode())).standard_normal(DIM)
        out[i, 0] += 1e-3  # never all zero
    return out


def corpus(n, seed):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        size = int(rng.integers(2, 9))
        # Zipf-like: a few common words, many rare ones (idf spreads)
        docs.append(" ".join(WORDS[min(int(rng.zipf(1.6)) - 1, len(WORDS) - 1)] for _ in range(size)))
    return docs


def bm25(docs: dict, query: str, k1=1.2, b=0.75):
    """FTS5's bm25 (k1 1.2, b 0.75; idf log((N - n + 0.5) / (n + 0.5)), at least 1e-6) of every
    document matching any word of the query (FTS5 scores each query term once per occurrence)."""
    toks = {key: re.findall(r"\w+", d.lower()) for key, d in docs.items()}
    n_docs = len(toks)
    avg = sum(len(t) for t in toks.values()) / n_docs
    terms = re.findall(r"\w+", query.lower())
    out = {}
    for key, t in toks.items():
        counts = Counter(t)
        if not any(w in counts for w in terms):
            continue
        score = 0.0
        for w in terms:
            hits = sum(1 for tt in toks.values() if w in tt)
            idf = max(math.log((n_docs - hits + 0.5) / (hits + 0.5)), 1e-6)
            tf = counts.get(w, 0)
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(t) / avg))
        out[key] = score
    return out


@pytest.fixture()
def docs_col(backend):
    col = backend.create(dim=None, metric="cosine", embedding=embed)
    col.create_payload_index("g")
    return col


def fill(col, n=120, seed=0):
    docs = corpus(n, seed)
    keys = [f"d{i}" for i in range(n)]
    col.upsert(keys, payloads=[{"g": i % 3} for i in range(n)], documents=docs)
    return dict(zip(keys, docs))


def test_documents_are_embedded_stored_and_returned(backend, docs_col):
    docs = fill(docs_col, 30)
    got = docs_col.get(["d3", "nope"], with_vector=True)
    assert got[1] is None and got[0]["document"] == docs["d3"] and got[0]["payload"] == {"g": 0}
    x = embed([docs["d3"]])[0]
    np.testing.assert_allclose(got[0]["vector"], x / np.linalg.norm(x), rtol=1e-5, atol=1e-6)
    assert docs_col.config["embedding"] == "custom" and docs_col.dim == DIM
    # a text query is the query vector the embedding makes
    by_text = docs_col.search(text=docs["d3"], k=5, with_document=True)
    by_vector = docs_col.search(embed([docs["d3"]])[0], k=5)
    assert [h.id for h in by_text] == [h.id for h in by_vector]
    assert by_text[0].document == docs[by_text[0].id] and by_vector[0].document is None


def test_keyword_search_ranks_as_bm25_over_the_documents(backend, docs_col):
    docs = fill(docs_col)
    for query in ["gamma", "kappa sigma", "lambda", "alpha beta gamma", "nothing-like-it xyz"]:
        want = bm25(docs, query)
        hits = docs_col.search(text=query, k=len(docs), mode="keyword", with_document=True)
        assert {h.id for h in hits} == set(want), query  # every document with a query word, only those
        assert all(h.metric == "bm25" and h.document == docs[h.id] for h in hits)
        if backend.kind != "sharded":  # (each shard's BM25 counts its own documents)
            np.testing.assert_allclose([h.score for h in hits], [want[h.id] for h in hits], rtol=1e-4)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    top = docs_col.search(text="kappa sigma", k=3, mode="keyword")
    assert len(top) == min(3, len(bm25(docs, "kappa sigma")))
    batch = docs_col.search(text=["gamma", "lambda"], k=4, mode="keyword")
    assert [[h.id for h in r] for r in batch] == [[h.id for h in docs_col.search(text=t, k=4, mode="keyword")]
                                                  for t in ["gamma", "lambda"]]


def test_hybrid_is_the_reciprocal_rank_fusion_of_both_halves(backend, docs_col):
    fill(docs_col)
    for query, weights in [("gamma delta", None), ("kappa", (1.0, 3.0)), ("omega theta", (2.0, 0.5))]:
        n = contract.hybrid_candidates(5)
        vec = docs_col.search(text=query, k=n)
        kw = docs_col.search(text=query, k=n, mode="keyword")
        w = weights or (1.0, 1.0)
        fused = Counter()
        for weight, hits in zip(w, (vec, kw)):
            for rank, h in enumerate(hits, 1):
                fused[h.id] += weight / (contract.RRF_K + rank)
        got = docs_col.search(text=query, k=5, mode="hybrid", weights=weights)
        assert all(h.metric == "rrf" for h in got)
        np.testing.assert_allclose([h.score for h in got], sorted(fused.values(), reverse=True)[:5], rtol=1e-9)
        assert all(math.isclose(fused[h.id], h.score, rel_tol=1e-9) for h in got)


def test_filters_apply_to_both_halves_and_to_documents(backend, docs_col):
    docs = fill(docs_col)
    for mode in ("vector", "keyword", "hybrid"):
        hits = docs_col.search(text="gamma kappa", k=50, mode=mode, filter={"g": 1})
        assert hits and all(int(h.id[1:]) % 3 == 1 for h in hits), mode
    has = {k for k, d in docs.items() if "kappa" in d}
    assert docs_col.count({"$document": {"$contains": "kappa"}}) == len(has)
    assert docs_col.count({"$document": {"$not_contains": "kappa"}}) == len(docs) - len(has)
    hits = docs_col.search(text="gamma", k=200, mode="keyword", filter={"$document": {"$contains": "kappa"}})
    assert {h.id for h in hits} == {k for k in has if "gamma" in docs[k]}
    assert docs_col.delete(filter={"$document": {"$contains": "kappa"}}) == len(has)
    assert not docs_col.search(text="kappa", k=10, mode="keyword")


def test_replaced_and_deleted_documents_leave_the_keyword_index(backend, docs_col):
    docs_col.upsert(["a", "b"], documents=["alpha beta", "beta gamma"])
    docs_col.upsert(["a"], documents=["delta omega"])             # replaced
    docs_col.upsert(["b"], vectors=embed(["zeta"]), payloads=[{}])  # replaced, no document now
    assert docs_col.search(text="alpha beta gamma", k=5, mode="keyword") == []
    assert [h.id for h in docs_col.search(text="omega", k=5, mode="keyword")] == ["a"]
    assert docs_col.get(["b"])[0]["document"] is None
    docs_col.delete(["a"])
    assert docs_col.search(text="omega", k=5, mode="keyword") == []


def test_bad_text_arguments_raise_typed_errors(backend, docs_col):
    docs_col.upsert(["a"], documents=["alpha"])
    cases = [
        (dict(text="alpha", mode="fuzzy"), ValueError, "mode"),
        (dict(mode="keyword"), ValueError, "text"),
        (dict(queries=embed(["a"])[0], text="alpha"), ValueError, "not both"),
        (dict(queries=embed(["a"])[0], text="alpha", mode="keyword"), ValueError, "text only"),
        (dict(text="alpha", weights=(1, 1)), ValueError, "hybrid"),
        (dict(text="alpha", mode="hybrid", weights=(1, -1)), ValueError, "weights"),
        (dict(text=42), TypeError, "text"),
        (dict(text=["a", 3]), TypeError, "text[1]"),
    ]
    for kwargs, exc, words in cases:
        with pytest.raises(exc, match=re.escape(words)):
            docs_col.search(k=3, **kwargs)
    with pytest.raises(ValueError, match="documents"):
        docs_col.upsert(["b"])
    with pytest.raises(ValueError, match=re.escape("documents[1] is None")):
        docs_col.upsert(["b", "c"], documents=["alpha", None])
    with pytest.raises(TypeError, match=re.escape("documents[0]")):
        docs_col.upsert(["b"], documents=[b"bytes"])
    with pytest.raises(ValueError, match="2 entries"):
        docs_col.upsert(["b"], documents=["x", "y"])
    with pytest.raises(shoal.errors.DimensionMismatchError):
        docs_col.upsert(["b"], vectors=np.ones((1, DIM + 1), np.float32), documents=["x"])
    assert docs_col.count() == 1


def test_a_collection_without_an_embedding_says_so(backend):
    col = backend.create(dim=4, metric="cosine")
    col.upsert([1], np.ones((1, 4), np.float32), documents=["alpha beta"])
    assert [h.id for h in col.search(text="beta", mode="keyword")] == [1]  # keyword needs no model
    with pytest.raises(shoal.errors.EmbeddingError, match="no embedding function"):
        col.search(text="beta")
    with pytest.raises(shoal.errors.EmbeddingError, match="no embedding function"):
        col.upsert([2], documents=["gamma"])
    with pytest.raises(shoal.errors.DimensionMismatchError, match="makes 16-d"):
        backend.create(dim=4, metric="cosine", embedding=embed)


def test_each_point_once_in_keyword_results_while_documents_are_replaced(backend, docs_col):
    """Exactly-once visibility: while a writer re-upserts every point with a new document (all
    holding a shared word), each keyword search finds every point once, as one version."""
    keys = [f"p{i}" for i in range(40)]
    docs_col.upsert(keys, documents=[f"sigma v0 {k}" for k in keys])
    stop = threading.Event()

    def writer():
        for r in range(1, 25):
            docs_col.upsert(keys, documents=[f"sigma v{r} {k}" for k in keys])
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = 0
    while not stop.is_set() or seen < 3:
        for mode in ("keyword", "hybrid"):
            hits = docs_col.search(text="sigma", k=100, mode=mode, with_document=True)
            ids = [h.id for h in hits]
            assert sorted(ids) == sorted(keys), mode
            assert all(h.document.endswith(h.id) for h in hits)
        seen += 1
    thread.join()
