"""Vectors the memory tests draw: unit rows, a drifting topic stream, and exact top-k with faiss."""

from __future__ import annotations

import faiss
import numpy as np


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) float32 rows drawn from N(0, I), L2-normalised."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(xb: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of q over (xb, ids): faiss IndexFlatIP behind an IndexIDMap."""
    index = faiss.IndexIDMap(faiss.IndexFlatIP(xb.shape[1]))
    index.add_with_ids(xb, ids)
    return index.search(q, k)


def topic_stream(n: int, d: int, n_topics: int, seed: int = 0, jitter: int = 3, spread: float = 0.5) -> np.ndarray:
    """(n, d) unit rows around ``n_topics`` centres, the stream moving through them in order (each
    row's topic is its position's plus up to ``jitter - 1``), so PQ error drifts as it goes."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_topics, d))
    topic = np.minimum((np.arange(n) / n * n_topics).astype(int) + rng.integers(0, jitter, n), n_topics - 1)
    x = (centres[topic] + spread * rng.standard_normal((n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
