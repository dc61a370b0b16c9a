"""Recall probes: the gap the certificate does not cover (items an approximate search missed).

Exact search (faiss ``IndexFlatIP``) over every live item's original vector, compared with the
memory's answer for the same queries: probe recall@k = |memory top-k ∩ exact top-k| / k.
"""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np

from luma_pl.memory.policy import BUFFER, HOT, WARM


@dataclasses.dataclass(frozen=True)
class ProbeReport:
    recall: float
    """Mean probe recall@k over the probed queries (nan when none)."""
    top1_agreement: float
    """Share of probes whose memory top-1 is the exact top-1."""
    queries: int
    live_items: int
    per_query: np.ndarray
    """(P,) recall@k per probe."""


def live_items(memory) -> tuple[np.ndarray, np.ndarray]:
    """External ids (n,) and original vectors (n, d) of every item in hot, warm or the buffer."""
    n = memory.num_keys
    loc = memory.locations[:n]
    keys = np.flatnonzero((loc == HOT) | (loc == WARM) | (loc == BUFFER))
    return memory.ids[keys], memory.originals.get(keys)


def exact_search(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: scores (Q, k) and ids (Q, k) (-1 padded)."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    d, i = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return d, np.where(i >= 0, ids[np.clip(i, 0, None)] if len(ids) else -1, -1)


def probe_recall(memory, queries: np.ndarray, k: int, answer_ids: np.ndarray | None = None,
                 rescore: bool = True) -> ProbeReport:
    """Probe recall@k of ``memory`` on ``queries`` (P, d): its answer (``answer_ids`` (P, >= k), or a
    fresh ``memory.search``) against exact search over all live items."""
    queries = np.asarray(queries, dtype=np.float32)
    if len(queries) == 0:
        return ProbeReport(float("nan"), float("nan"), 0, 0, np.zeros(0))
    if answer_ids is None:
        answer_ids = memory.search(queries, k, rescore=rescore, record_hits=False).ids
    answer_ids = np.asarray(answer_ids)[:, :k]
    ids, vecs = live_items(memory)
    _, truth = exact_search(ids, vecs, queries, k)
    kk = min(k, len(ids)) or 1
    hit = (answer_ids[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    per = hit.any(2).sum(1) / kk
    top1 = float((answer_ids[:, 0] == truth[:, 0]).mean())
    return ProbeReport(float(per.mean()), top1, len(queries), len(ids), per)
