"""Adapters for the peer libraries of the core benchmark (benchmark-only extras, never
runtime dependencies of shoal): ``build(engine, base, m, efc, threads)`` returns
``(search(queries, k, ef) -> labels, info)``. Loaded by ``shoal.bench --peers``."""

from __future__ import annotations

import numpy as np


def build(engine: str, base: np.ndarray, m: int, efc: int, threads: int):
    n, dim = base.shape
    if engine == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=n, ef_construction=efc, M=m, random_seed=0)
        index.set_num_threads(threads)
        index.add_items(base)
        index.set_num_threads(1)

        def search(q, k, ef):
            index.set_ef(ef)
            return index.knn_query(q, k)[0]
        return search, {}
    if engine == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = efc
        index.add(base)
        faiss.omp_set_num_threads(1)

        def search(q, k, ef):
            index.hnsw.efSearch = ef
            return index.search(q, k)[1]
        return search, {}
    if engine == "usearch":
        from usearch.index import Index

        index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=m, expansion_add=efc)
        index.add(np.arange(n), base, threads=threads)

        def search(q, k, ef):
            index.expansion_search = ef
            return index.search(q, k, threads=1).keys
        return search, {}
    raise ValueError(f"unknown engine {engine!r}")
