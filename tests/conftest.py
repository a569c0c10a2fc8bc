import numpy as np
import pytest

from shoal.datasets import BUNDLED, FULL, PKG, load_dataset


@pytest.fixture(scope="session")
def wordnet10k():
    """The committed 10,000-row slice of real sentence embeddings."""
    return load_dataset(BUNDLED)


@pytest.fixture(scope="session")
def wordnet_full():
    if not (FULL / "base.npy").is_file():
        pytest.skip(f"the full wordnet-minilm-384 dataset is not at {FULL} (set SHOAL_DATASET)")
    return load_dataset(FULL)


@pytest.fixture(scope="session")
def pkg_full():
    if not (PKG / "base.npy").is_file():
        pytest.skip(f"the pkg-minilm-384 dataset is not at {PKG} (set SHOAL_DATASET_PKG)")
    return load_dataset(PKG)


@pytest.fixture(scope="session")
def built10k(wordnet10k):
    """An index over the slice, built once for read-only tests."""
    import shoal

    index = shoal.Index(384, "cosine", m=16, ef_construction=64, seed=0)
    index.add(wordnet10k.base)
    return index


def random_vectors(n, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
