"""Bridge quality on the demo corpus (WordLlama -> MiniLM): issue 3's "Must show".

1. Retrieval of every query against every item in canonical (MiniLM) space, k = 10:
   (a) native canonical queries, (b) StreamingProcrustes at the end of the stream (lam = 1 and
   extra lam rows), (c) scipy's batch ``orthogonal_procrustes`` oracle on the same pairs (asserted
   equal to (b) at lam = 1), (d) least squares, (e) each learned bridge for a fixed budget, plus a
   random semi-orthogonal map (chance) and native source-space retrieval for context.
2. A learning curve: Recall@10 of streaming Procrustes after 64, 256, 1k, 4k, ... anchors, in
   topic (stream) order and shuffled (fixed seed).
3. epsilon = ||W_t - W_{t-R}||_2 at every scheduled refresh (R = 500 pairs) and drift from the final W.

Anchor pairs are the *items* (item text in both spaces, in stream order); queries are different
texts (qualified name + signature), so the table measures generalisation from item anchors to
query texts. The anchors include the items being searched for: that is the design (anchors are
the stored content, embedded in both spaces), not a leak of the queries, which are never fitted.

Usage: python -m bench.bridge_quality [--quick] [--synthetic] [--out PREFIX]
Writes PREFIX.json and PREFIX.md (default bench/results/bridge_quality, ``_quick`` in quick mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from luma_pl.bridge import ProcrustesConfig, StreamingProcrustes
from luma_pl.bridge import functional as BF
from luma_pl.bridge.learned import LearnedBridge, LearnedBridgeConfig
from luma_pl.metrics import functional as MF
from luma_pl.threads import limit_cpu_threads

K = 10
METRICS = ("recall", "mrr", "hit_rate", "ndcg")
ORACLE_TOL = 1e-8


@dataclasses.dataclass
class Arrays:
    """Everything the benchmark needs, as float32 unit rows (items in stream order)."""

    item_s: np.ndarray  # (N, d_s) source (wordllama) item vectors
    item_c: np.ndarray  # (N, d_c) canonical (minilm) item vectors
    query_s: np.ndarray  # (Q, d_s)
    query_c: np.ndarray  # (Q, d_c)
    query_item: np.ndarray  # (Q,) int64: the query's one relevant item
    item_topic: list[str]
    name: str


def load_demo(max_items: int | None = None) -> Arrays:
    """The demo corpus (cached); ``max_items`` keeps the first items in stream order and their queries."""
    from luma_pl.corpus import DemoCorpusConfig, build_demo_corpus

    corpus = build_demo_corpus(DemoCorpusConfig())
    e, t = corpus.emb, corpus.texts
    n = len(t.item_text) if max_items is None else min(max_items, len(t.item_text))
    qi = np.asarray(t.query_item, np.int64)
    keep = qi < n
    return Arrays(e["wordllama"][:n], e["minilm"][:n], e["query_wordllama"][keep], e["query_minilm"][keep],
                  qi[keep], list(t.item_topic[:n]), f"demo(numpy+scipy docstrings, first {n} items)")


def synthetic(n_items: int = 600, queries_per_item: float = 1.5, d_s: int = 48, d_c: int = 64,
              n_topics: int = 6, seed: int = 0) -> Arrays:
    """A small corpus with a known semi-orthogonal relation ``s ~ Q^T c`` and topic clusters."""
    rng = np.random.default_rng(seed)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    Q = np.linalg.qr(rng.standard_normal((d_c, d_s)))[0]  # (d_c, d_s) orthonormal columns
    topic = np.sort(rng.integers(0, n_topics, n_items))  # stream visits topics in order
    centres = rng.standard_normal((n_topics, d_c))
    c = unit(centres[topic] + 1.2 * rng.standard_normal((n_items, d_c)))
    s = unit(c @ Q + 0.1 * rng.standard_normal((n_items, d_s)))
    n_q = int(n_items * queries_per_item)
    qi = rng.integers(0, n_items, n_q)
    qc = unit(c[qi] + 0.15 * rng.standard_normal((n_q, d_c)))
    qs = unit(qc @ Q + 0.1 * rng.standard_normal((n_q, d_s)))
    return Arrays(s, c, qs, qc, qi.astype(np.int64), [f"t{t}" for t in topic], f"synthetic(n={n_items}, seed={seed})")


# --- evaluation --------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def evaluate(queries: np.ndarray, items: np.ndarray, query_item: np.ndarray, metrics=METRICS) -> dict:
    """Metrics@K of unit ``queries`` (Q, d) against unit ``items`` (N, d); query j's relevant set is {query_item[j]}.

    Uses ``luma_pl.metrics.functional`` and cross-checks Recall@K against the rank of the one
    relevant item computed directly (ties go to the lower item index in both).
    """
    scores = torch.from_numpy(np.ascontiguousarray(queries, np.float32)) @ torch.from_numpy(
        np.ascontiguousarray(items, np.float32)).T  # (Q, N)
    rel = torch.zeros(scores.shape, dtype=torch.bool)
    qi = torch.from_numpy(query_item)
    rel[torch.arange(len(qi)), qi] = True
    out = {m: float(getattr(MF, m)(scores, rel, K)) for m in metrics}
    own = scores.gather(1, qi[:, None])  # (Q, 1)
    idx = torch.arange(scores.shape[1])[None, :]
    rank = 1 + ((scores > own) | ((scores == own) & (idx < qi[:, None]))).sum(1)  # (Q,)
    direct = float((rank <= K).double().mean())
    if "recall" in out and abs(direct - out["recall"]) > 1e-12:
        raise AssertionError(f"metrics.recall@{K}={out['recall']} but the direct rank count gives {direct}")
    out["median_rank"] = float(rank.double().median())
    return out


# --- bridges -----------------------------------------------------------------------------------
def scipy_oracle(s: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Batch oracle ``W`` (d_c, d_s) = argmin over semi-orthogonal W of ||S W^T - C||_F, via scipy.

    ``scipy.linalg.orthogonal_procrustes(A, B)`` needs A and B of the same shape (it returns a
    square orthogonal R minimising ||A R - B||). With d_s < d_c we pad S with zero columns to
    d_c: A^T B = [S^T C; 0], whose left singular vectors for the zero singular values are the
    padded coordinates (when S^T C has full rank d_s), so R = U V^T has R[:d_s] = U1 V1^T,
    exactly the transpose of the semi-orthogonal U V^T of M = C^T S. With d_s > d_c we pad C.
    """
    s64, c64 = s.astype(np.float64), c.astype(np.float64)
    d_s, d_c = s.shape[1], c.shape[1]
    if d_s <= d_c:
        A = np.hstack([s64, np.zeros((len(s64), d_c - d_s))])
        R, _ = scipy.linalg.orthogonal_procrustes(A, c64)  # (d_c, d_c)
        return R[:d_s, :].T.copy()  # (d_c, d_s)
    B = np.hstack([c64, np.zeros((len(c64), d_s - d_c))])
    R, _ = scipy.linalg.orthogonal_procrustes(s64, B)  # (d_s, d_s)
    return R[:, :d_c].T.copy()


def svd_oracle(s: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The same optimum from scipy's SVD of the cross-covariance M = C^T S (d_c, d_s): W = U V^T."""
    M = c.astype(np.float64).T @ s.astype(np.float64)
    U, _, Vt = scipy.linalg.svd(M, full_matrices=False)
    return U @ Vt


def stream(arr: Arrays, order: np.ndarray, lam: float, batch: int, refresh_every: int,
           checkpoints: tuple[int, ...] = (), **cfg) -> dict:
    """Feed anchor pairs in ``order`` to a StreamingProcrustes in batches; returns the final W,
    the scheduled refreshes (pairs, epsilon, W) and the W after each checkpoint (pair counts)."""
    d_s, d_c = arr.item_s.shape[1], arr.item_c.shape[1]
    br = StreamingProcrustes(ProcrustesConfig(d_s=d_s, d_c=d_c, lam=lam, refresh_every=refresh_every, **cfg))
    s_all, c_all = torch.from_numpy(arr.item_s[order]), torch.from_numpy(arr.item_c[order])
    n = len(order)
    bounds = sorted(set(range(0, n, batch)) | {p for p in checkpoints if 0 < p < n} | {n})
    refreshes, at = [], {}
    t0 = time.perf_counter()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if br.fit_step(s_all[a:b], c_all[a:b]):
            refreshes.append({"pairs": int(br.pairs_total), "epsilon": br.epsilon(),
                              "drift_from_ref": br.drift_from_reference(), "W": br.W.clone()})
        if b in checkpoints:
            at[b] = br.refresh().clone() if int(br.pairs_at_refresh) != b else br.W.clone()
    if int(br.pairs_at_refresh) != n or int(br.refreshes) == 0:
        br.refresh()  # on demand: the end of the stream
    fit_s = time.perf_counter() - t0
    return {"bridge": br, "W": br.W.clone().numpy(), "refreshes": refreshes, "at": at, "fit_s": fit_s}


def train_learned(arr: Arrays, kind: str, epochs: int, batch: int, lr: float, seed: int) -> dict:
    d_s, d_c = arr.item_s.shape[1], arr.item_c.shape[1]
    torch.manual_seed(seed)
    br = LearnedBridge(LearnedBridgeConfig(kind=kind, d_s=d_s, d_c=d_c, lr=lr))
    s, c = torch.from_numpy(arr.item_s), torch.from_numpy(arr.item_c)
    g = torch.Generator().manual_seed(seed)
    t0, steps, losses = time.perf_counter(), 0, []
    br.train()
    for _ in range(epochs):
        perm = torch.randperm(len(s), generator=g)
        ep = []
        for a in range(0, len(s), batch):
            idx = perm[a:a + batch]
            ep.append(br.fit_step(s[idx], c[idx]))
            steps += 1
        losses.append(statistics.fmean(ep))
    br.eval()
    fit_s = time.perf_counter() - t0
    with torch.no_grad():
        q = br(torch.from_numpy(arr.query_s)).numpy()
        a = br(s).numpy()
    return {"bridge": br, "query": q, "anchor": a, "fit_s": fit_s, "steps": steps,
            "loss_first_epoch": losses[0], "loss_last_epoch": losses[-1],
            "logit_scale": float(br.logit_scale().detach())}


def _apply(W: np.ndarray, x: np.ndarray) -> np.ndarray:
    return _unit(x.astype(np.float64) @ W.T)


def _summary(xs: list[float]) -> dict:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return {"n": 0, "min": None, "median": None, "max": None}
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def curve_points(n: int) -> list[int]:
    pts, p = [], 64
    while p < n:
        pts.append(p)
        p *= 4
    return pts + [n]


# --- the run -----------------------------------------------------------------------------------
def run(arr: Arrays, quick: bool = False, batch: int = 100, refresh_every: int = 500, seed: int = 0,
        epochs: int | None = None, learned_batch: int = 256, lr: float = 1e-3,
        extra_lams: tuple[float, ...] = (0.999, 0.98)) -> dict:
    n, d_s = arr.item_s.shape
    d_c = arr.item_c.shape[1]
    epochs = epochs if epochs is not None else (3 if quick else 30)
    rows = []

    def row(method, group, q, anchor=None, fit_s=None, note=""):
        r = {"method": method, "group": group, **evaluate(q, arr.item_c, arr.query_item)}
        if anchor is not None:  # bridged source items vs canonical items: the fit on the anchors themselves
            r["anchor_recall"] = evaluate(anchor, arr.item_c, np.arange(n), metrics=("recall",))["recall"]
        r["fit_s"] = fit_s
        r["note"] = note
        rows.append(r)
        return r

    stream_order = np.arange(n)
    shuffled = np.random.default_rng(seed).permutation(n)

    # (a) native
    row("native canonical (query_minilm)", "a", arr.query_c, note="upper reference: queries embedded by the canonical encoder")
    r_src = {"method": "native source (query_wordllama vs wordllama items)", "group": "a'",
             **evaluate(arr.query_s, arr.item_s, arr.query_item), "fit_s": None,
             "note": "context only: retrieval inside the source space, no bridge"}
    rows.append(r_src)

    # (b) streaming Procrustes, lam = 1, stream order
    st = stream(arr, stream_order, 1.0, batch, refresh_every)
    W_b = st["W"]
    row("StreamingProcrustes lam=1", "b", _apply(W_b, arr.query_s), _apply(W_b, arr.item_s), st["fit_s"],
        f"batches of {batch}, refresh every {refresh_every} pairs + on demand at the end")
    for lam in extra_lams:
        sl = stream(arr, stream_order, lam, batch, refresh_every)
        row(f"StreamingProcrustes lam={lam}", "b", _apply(sl["W"], arr.query_s), _apply(sl["W"], arr.item_s),
            sl["fit_s"], f"lam per fit_step of {batch} pairs: effective memory ~{batch / (1 - lam):.0f} pairs")
    sc = stream(arr, stream_order, 1.0, batch, refresh_every, center=True, scale=True)
    br_c = sc["bridge"]
    row("StreamingProcrustes lam=1 center+scale", "b", br_c(torch.from_numpy(arr.query_s)).numpy(),
        br_c(torch.from_numpy(arr.item_s)).numpy(), sc["fit_s"], "affine map c ~ mu_c + rho W (s - mu_s)")

    # (c) scipy oracle
    t0 = time.perf_counter()
    W_c = scipy_oracle(arr.item_s, arr.item_c)
    t_c = time.perf_counter() - t0
    W_svd = svd_oracle(arr.item_s, arr.item_c)
    diff = float(np.abs(W_b - W_c).max())
    diff_svd = float(np.abs(W_b - W_svd).max())
    sv = scipy.linalg.svdvals(arr.item_c.astype(np.float64).T @ arr.item_s.astype(np.float64))
    # W = U V^T is sensitive to M in the directions of its smallest singular values (the polar
    # factor's perturbation scales like 1 / (sigma_i + sigma_j)): this is what drives epsilon
    spectrum = {"sigma_max": float(sv[0]), "sigma_min": float(sv[-1]), "condition": float(sv[0] / max(sv[-1], 1e-300))}
    gram = W_c.T @ W_c if d_c >= d_s else W_c @ W_c.T  # identity of size min(d_c, d_s)
    orth_err = float(np.abs(gram - np.eye(min(d_c, d_s))).max())
    row("scipy orthogonal_procrustes (batch oracle)", "c", _apply(W_c, arr.query_s), _apply(W_c, arr.item_s), t_c,
        f"source zero-padded to {max(d_s, d_c)}; max|W_b - W_c| = {diff:.2e}")
    if not diff <= ORACLE_TOL:
        raise AssertionError(f"streaming lam=1 W differs from scipy's orthogonal_procrustes by {diff:.3e} > {ORACLE_TOL}")

    # (d) least squares (unconstrained linear map, then normalise)
    t0 = time.perf_counter()
    X, *_ = np.linalg.lstsq(arr.item_s.astype(np.float64), arr.item_c.astype(np.float64), rcond=None)  # (d_s, d_c)
    t_d = time.perf_counter() - t0
    row("least squares (np.linalg.lstsq)", "d", _unit(arr.query_s @ X), _unit(arr.item_s @ X), t_d,
        "unconstrained linear map C ~ S X, rows normalised after")

    # (e) learned bridges
    learned = {}
    for kind in ("linear", "orthogonal", "mlp"):
        lr_ = train_learned(arr, kind, epochs, learned_batch, lr, seed)
        r = row(f"LearnedBridge {kind} (InfoNCE)", "e", lr_["query"], lr_["anchor"], lr_["fit_s"],
                f"{epochs} epochs x {math.ceil(n / learned_batch)} steps, batch {learned_batch}, Adam lr {lr}; "
                f"loss {lr_['loss_first_epoch']:.3f} -> {lr_['loss_last_epoch']:.3f}")
        learned[kind] = {k: lr_[k] for k in ("steps", "loss_first_epoch", "loss_last_epoch", "logit_scale")}
        r["steps"] = lr_["steps"]

    # chance baseline: a random semi-orthogonal map
    rng = np.random.default_rng(seed + 1)
    W_r = np.linalg.qr(rng.standard_normal((max(d_c, d_s), min(d_c, d_s))))[0]
    W_r = W_r if d_c >= d_s else W_r.T  # (d_c, d_s)
    row("random semi-orthogonal map", "-", _apply(W_r, arr.query_s), _apply(W_r, arr.item_s), None, "chance baseline")

    # 2. learning curve (lam = 1; W solved on demand after exactly p anchors)
    pts = curve_points(n)
    curve = {}
    for name, order in (("topic_order", stream_order), ("shuffled", shuffled)):
        cs = stream(arr, order, 1.0, batch, 0, checkpoints=tuple(pts))
        cs["at"][n] = torch.from_numpy(cs["W"])
        curve[name] = [{"anchors": p, "recall": evaluate(_apply(cs["at"][p].numpy(), arr.query_s), arr.item_c,
                                                        arr.query_item, metrics=("recall",))["recall"],
                        "topics_seen": len({arr.item_topic[i] for i in order[:p]})} for p in pts]

    # 3. epsilon over the stream at every scheduled refresh (R = refresh_every), both orders
    eps = {}
    q_s = torch.from_numpy(arr.query_s).double()
    for name, order, s_ in (("topic_order", stream_order, st), ("shuffled", shuffled, None)):
        s_ = s_ or stream(arr, order, 1.0, batch, refresh_every)
        W_final = torch.from_numpy(s_["W"])
        series, prev = [], None
        for r in s_["refreshes"]:
            # the certificate's epsilon is a sup over all unit inputs; for context, the largest
            # actual move of a (unit) query over the same interval: max_j ||(W_t - W_{t-R}) q_j||
            moved = float(torch.linalg.vector_norm(q_s @ (r["W"] - prev).T, dim=1).max()) if prev is not None else math.inf
            series.append({"pairs": r["pairs"], "epsilon": r["epsilon"], "query_max_move": moved,
                           "drift_from_ref": r["drift_from_ref"], "drift_to_final": float(BF.drift(r["W"], W_final))})
            prev = r["W"]
        eps[name] = {"series": series, "epsilon": _summary([x["epsilon"] for x in series]),
                     "query_max_move": _summary([x["query_max_move"] for x in series]),
                     "drift_to_final": _summary([x["drift_to_final"] for x in series])}

    return {
        "corpus": {"name": arr.name, "items": n, "queries": len(arr.query_item), "d_s": d_s, "d_c": d_c,
                   "topics": len(set(arr.item_topic))},
        "settings": {"k": K, "quick": quick, "batch": batch, "refresh_every": refresh_every, "seed": seed,
                     "learned": {"epochs": epochs, "batch": learned_batch, "lr": lr, "optimizer": "Adam",
                                 "loss": "symmetric InfoNCE, learnable temperature"},
                     "threads": torch.get_num_threads()},
        "notes": [
            "Relevant set of a query = its one item; gallery = all items in canonical (MiniLM) space.",
            "Anchor pairs = the items (same text in both spaces). They include the items searched for: by design "
            "the anchors are the stored content; the queries (name + signature) are never fitted.",
            "anchor_recall = Recall@10 of bridged source items against canonical items (fit on the anchors themselves).",
            "With |R| = 1, Recall@10 = HitRate@10.",
        ],
        "rows": rows,
        "oracle": {"max_abs_W_stream_minus_scipy_procrustes": diff, "max_abs_W_stream_minus_scipy_svd": diff_svd,
                   "oracle_orthonormality_error": orth_err, "tolerance": ORACLE_TOL, "M_spectrum": spectrum},
        "learned": learned,
        "curve": curve,
        "epsilon": eps,
    }


# --- output ------------------------------------------------------------------------------------
def _f(x, fmt=".4f"):
    return "-" if x is None else format(x, fmt)


def markdown(res: dict) -> str:
    c, s = res["corpus"], res["settings"]
    L = [f"# Bridge quality: {c['name']}", "",
         f"{c['items']} items (anchor pairs), {c['queries']} queries, {c['topics']} topics; "
         f"source d_s={c['d_s']} (wordllama) -> canonical d_c={c['d_c']} (minilm); k={s['k']}; "
         f"stream batches of {s['batch']}, R={s['refresh_every']}; threads={s['threads']}.", ""]
    L += [f"- {n}" for n in res["notes"]] + [""]
    L += ["| group | method | Recall@10 | MRR@10 | HitRate@10 | nDCG@10 | median rank | anchor R@10 | fit s | note |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in res["rows"]:
        L.append(f"| {r['group']} | {r['method']} | {_f(r['recall'])} | {_f(r['mrr'])} | {_f(r['hit_rate'])} | "
                 f"{_f(r['ndcg'])} | {_f(r['median_rank'], '.0f')} | {_f(r.get('anchor_recall'))} | "
                 f"{_f(r['fit_s'], '.3f')} | {r['note']} |")
    o = res["oracle"]
    L += ["", f"Oracle check (lam=1): max|W_stream - W_scipy_procrustes| = {o['max_abs_W_stream_minus_scipy_procrustes']:.3e}, "
          f"max|W_stream - W_scipy_svd(M)| = {o['max_abs_W_stream_minus_scipy_svd']:.3e} (tolerance {o['tolerance']:.0e}); "
          f"oracle orthonormality error {o['oracle_orthonormality_error']:.1e}. "
          f"Cross-covariance M = C^T S: sigma_max {o['M_spectrum']['sigma_max']:.3g}, "
          f"sigma_min {o['M_spectrum']['sigma_min']:.3g} (condition {o['M_spectrum']['condition']:.3g}); "
          "W = U V^T is poorly determined along the smallest singular directions, which is what the "
          "spectral-norm epsilon below sees.", "",
          "## Learning curve (streaming Procrustes, lam=1): Recall@10 after n anchors", "",
          "| anchors | topic order | topics seen | shuffled (seed {}) | topics seen |".format(s["seed"]),
          "| ---: | ---: | ---: | ---: | ---: |"]
    for a, b in zip(res["curve"]["topic_order"], res["curve"]["shuffled"], strict=True):
        L.append(f"| {a['anchors']} | {a['recall']:.4f} | {a['topics_seen']} | {b['recall']:.4f} | {b['topics_seen']} |")
    L += ["", f"## Drift over the stream (lam=1, scheduled refresh every R={s['refresh_every']} pairs)", "",
          "epsilon = ||W_t - W_{t-R}||_2 (StreamingProcrustes.epsilon()); drift to final = ||W_t - W_final||_2.", "",
          "max query move = max_j ||(W_t - W_{t-R}) q_j|| over the unit source queries (context: epsilon bounds it).", "",
          "| order | refreshes with epsilon | epsilon min | median | max | max query move min | median | max "
          "| drift to final min | median | max |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, e in res["epsilon"].items():
        a, m, b = e["epsilon"], e["query_max_move"], e["drift_to_final"]
        L.append(f"| {name} | {a['n']} | {_f(a['min'])} | {_f(a['median'])} | {_f(a['max'])} | "
                 f"{_f(m['min'])} | {_f(m['median'])} | {_f(m['max'])} | "
                 f"{_f(b['min'])} | {_f(b['median'])} | {_f(b['max'])} |")
    L += ["", "| order | pairs | epsilon | max query move | drift from ref (first refresh) | drift to final |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, e in res["epsilon"].items():
        for x in e["series"]:
            L.append(f"| {name} | {x['pairs']} | {_f(x['epsilon'])} | {_f(x['query_max_move'])} | "
                     f"{_f(x['drift_from_ref'])} | {_f(x['drift_to_final'])} |")
    return "\n".join(L) + "\n"


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (first 600 items, 3 learned epochs) for tests")
    ap.add_argument("--synthetic", action="store_true", help="a synthetic corpus instead of the demo corpus")
    ap.add_argument("--max-items", type=int, default=None, help="first N items of the demo corpus (quick: 600)")
    ap.add_argument("--batch", type=int, default=100, help="anchor pairs per StreamingProcrustes.fit_step")
    ap.add_argument("--refresh-every", type=int, default=None, help="R: pairs between scheduled refreshes (500, quick 100)")
    ap.add_argument("--epochs", type=int, default=None, help="learned-bridge epochs (default 30, quick 3)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output prefix (default bench/results/bridge_quality[_quick])")
    args = ap.parse_args(argv)
    limit_cpu_threads()
    t0 = time.perf_counter()
    if args.synthetic:
        arr = synthetic(n_items=args.max_items or 600)
    else:
        arr = load_demo(args.max_items or (600 if args.quick else None))
    res = run(arr, quick=args.quick, batch=args.batch, refresh_every=args.refresh_every or (100 if args.quick else 500), seed=args.seed,
              epochs=args.epochs, lr=args.lr)
    res["settings"]["wall_s"] = round(time.perf_counter() - t0, 2)
    md = markdown(res)
    out = Path(args.out or ("bench/results/bridge_quality" + ("_quick" if args.quick else "")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(_jsonable(res), indent=1, default=float))
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} in {res['settings']['wall_s']} s")
    return res


if __name__ == "__main__":
    main()
