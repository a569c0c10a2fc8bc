"""Load benchmark datasets laid out like ``wordnet-minilm-384``, and score results.

A dataset directory holds ``base.npy`` (n, d), ``queries.npy`` (nq, d), ``gt.npy`` (nq, >= k)
exact neighbours (rows of base, best first), and optionally ``base_texts.txt`` /
``query_texts.txt`` (one line per row).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The slice committed with the project (data/wordnet-10k beside src/).
BUNDLED = Path(__file__).resolve().parents[2] / "data" / "wordnet-10k"
#: The full dataset where the project's workplace keeps it (absent on a user's clone).
FULL = Path(os.environ.get("SHOAL_DATASET", Path(__file__).resolve().parents[3] / "shared" / "datasets" / "wordnet-minilm-384"))
#: A second real set from another domain (package summaries), for checking that defaults tuned
#: on one set hold on another.
PKG = Path(os.environ.get("SHOAL_DATASET_PKG", Path(__file__).resolve().parents[3] / "shared" / "datasets" / "pkg-minilm-384"))


@dataclass
class Dataset:
    """Base vectors, queries and ground truth (float32 / int64), with texts when present."""

    name: str
    base: np.ndarray
    queries: np.ndarray
    gt: np.ndarray
    base_texts: list[str] = field(default_factory=list)
    query_texts: list[str] = field(default_factory=list)


def load_dataset(path: str | os.PathLike, *, texts: bool = False) -> Dataset:
    """Read a dataset directory; vectors are widened to float32."""
    path = Path(path)
    if not (path / "base.npy").is_file():
        raise FileNotFoundError(f"no dataset at {path} (expected base.npy, queries.npy, gt.npy)")
    ds = Dataset(
        name=path.name,
        base=np.load(path / "base.npy").astype(np.float32),
        queries=np.load(path / "queries.npy").astype(np.float32),
        gt=np.load(path / "gt.npy").astype(np.int64),
    )
    if texts:
        ds.base_texts = _lines(path / "base_texts.txt")
        ds.query_texts = _lines(path / "query_texts.txt")
    return ds


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8").splitlines()


def recall_per_query(found: np.ndarray, gt: np.ndarray, k: int = 10) -> np.ndarray:
    """float64 (nq,): the fraction of each query's true top-k (``gt`` >= 0; -1 pads) among its
    first k results."""
    found = np.asarray(found)[:, :k]
    truth = np.asarray(gt)[:, :k]
    hit = (truth[:, :, None] == found[:, None, :]).any(axis=2) & (truth >= 0)
    return hit.sum(axis=1) / k


def recall_at_k(found: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each query's true top-k found in its first k results."""
    return float(recall_per_query(found, gt, k).mean())
