"""Hubness-aware scoring of bridged queries: CSLS (cross-domain similarity local scaling).

A bridged query space has hubs: canonical items close to many bridged vectors, which then top many
rankings. CSLS (Conneau et al., 2018, "Word translation without parallel data") scores an item x
for a bridged query q as ``2 cos(q, x) - r(x)``, where ``r(x)`` is the mean cosine of x to its K
nearest bridged anchors (the source side of the anchor pairs, mapped by the same bridge); the
query-side term ``r(q)`` is the same for every item of one query and leaves its ranking unchanged,
so it is dropped.

Certificate: for a bridge whose change moves every unit bridged vector by at most ε, the plain
score ``cos(q, x)`` of every item moves by at most ε, so a top-k whose margin exceeds 2ε is stable.
Under CSLS ``2 cos(q, x)`` moves by at most 2ε and ``r(x)`` (a mean of cosines to bridged anchors,
each moved by at most ε) by at most ε: every CSLS score moves by at most 3ε and a CSLS ranking is
certified only with a margin above 6ε, i.e. with the plain certificate run at 3ε.
``CSLS_EPSILON_FACTOR`` is that 3.
"""

from __future__ import annotations

import numpy as np

CSLS_EPSILON_FACTOR = 3.0
"""The ε a CSLS ranking is certified at, per unit of the bridge's ε (see the module docstring)."""


def csls_penalty(items: np.ndarray, bridged_anchors: np.ndarray, k: int = 10, chunk: int = 4096) -> np.ndarray:
    """(N,) ``r(x)``: mean cosine of each unit item to its ``k`` nearest unit bridged anchors."""
    if k < 1 or len(bridged_anchors) == 0:
        raise ValueError(f"csls_penalty: k={k} with {len(bridged_anchors)} anchors; use k >= 1 and some anchors")
    k = min(k, len(bridged_anchors))
    out = np.empty(len(items), np.float64)
    for a in range(0, len(items), chunk):
        sims = items[a:a + chunk].astype(np.float32) @ bridged_anchors.astype(np.float32).T
        out[a:a + chunk] = np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)
    return out


def csls_scores(queries: np.ndarray, items: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """(Q, N) CSLS scores ``2 q·x - r(x)`` of unit bridged queries against unit items."""
    return 2.0 * (queries.astype(np.float32) @ items.astype(np.float32).T) - penalty[None, :].astype(np.float32)
