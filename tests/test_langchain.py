"""shoal's LangChain VectorStore passes LangChain's standard vector store tests, embedded and
over HTTP, and its metadata filters work."""

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402

import shoal  # noqa: E402
from shoal.integrations.langchain import ShoalVectorStore  # noqa: E402

from tests.server.conftest import LiveServer  # noqa: E402


class TestShoalVectorStoreEmbedded(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path):
        db = shoal.open(tmp_path / "db")
        col = db.create_collection("lc", dim=6, metric="cosine")
        try:
            yield ShoalVectorStore(col, self.get_embeddings())
        finally:
            db.close()


class TestShoalVectorStoreRemote(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path):
        srv = LiveServer(shoal.open(tmp_path / "db"))
        client = shoal.Client(srv.url)
        try:
            yield ShoalVectorStore(client.create_collection("lc", dim=6), self.get_embeddings())
        finally:
            client.close()
            srv.stop()


def test_from_texts_filters_and_scores(tmp_path):
    emb = TestShoalVectorStoreEmbedded.get_embeddings()
    with shoal.open(tmp_path / "db") as db:
        store = ShoalVectorStore.from_texts(
            ["alpha", "beta", "gamma", "delta"], emb,
            metadatas=[{"year": 2019, "src": "a"}, {"year": 2021, "src": "b"},
                       {"year": 2023, "src": "a"}, {"year": 2024, "src": "b"}],
            ids=["1", "2", "3", "4"], database=db, collection_name="docs")
        got = store.similarity_search("gamma", k=4, filter={"src": "a", "year": {"$gte": 2020}})
        assert got == [Document(page_content="gamma", metadata={"year": 2023, "src": "a"}, id="3")]
        doc, score = store.similarity_search_with_score("beta", k=1)[0]
        assert doc.id == "2" and score == pytest.approx(1.0, abs=1e-5)
        rel = store.similarity_search_with_relevance_scores("beta", k=1)[0][1]
        assert 0.99 <= rel <= 1.0
        assert store.similarity_search("x", k=3, filter={"$or": [{"src": "b"}, {"year": 2019}]})
        with pytest.raises(shoal.FilterError):
            store.similarity_search("x", filter={"year": {"$between": 1}})
        store.delete(["1"])
        assert sorted(d.id for d in store.get_by_ids(["1", "2", "9"])) == ["2"]
        store.delete()
        assert store.similarity_search("alpha", k=2) == []
