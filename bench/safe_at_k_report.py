"""Safe@k on the demo stream: certified rates (PQ scores / exact rescoring / crude rule), the online
audit's violations and flip rate, and probe recall. Writes bench/results/safe_at_k_report.{json,md}.

    LUMA_NUM_THREADS=1 .venv/bin/python bench/safe_at_k_report.py [--refresh-every 256] [--adversarial]

Stream: demo items in order; each batch of anchor pairs (wordllama, minilm) updates a streaming
Procrustes bridge and its minilm vectors enter a TieredMemory (hot 500 exact, the rest warm IVFPQ).
At each refresh the audit re-ranks a fixed probe set. At the end every demo query (wordllama) is
bridged, searched (20 candidates) and certified with ε = drift over the last refresh interval.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from luma_pl.bridge import ProcrustesConfig, StreamingProcrustes  # noqa: E402
from luma_pl.corpus import DemoCorpusConfig, build_demo_corpus  # noqa: E402
from luma_pl.memory import MemoryConfig, TieredMemory  # noqa: E402
from luma_pl.telemetry import (  # noqa: E402
    OnlineAudit,
    bridge_queries,
    certify_search,
    choose_epsilon,
    probe_recall,
    query_epsilon,
)
from luma_pl.threads import limit_cpu_threads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--refresh-every", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--probes", type=int, default=500)
    ap.add_argument("--hot", type=int, default=500, help="hot (exact) items; >= 2508 keeps everything exact")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--pq-m", type=int, default=384)
    ap.add_argument("--pq-nbits", type=int, default=5)
    ap.add_argument("--adversarial", action="store_true", help="also run the adversarial suite on all queries")
    args = ap.parse_args()
    limit_cpu_threads()
    t0 = time.perf_counter()
    corpus = build_demo_corpus(DemoCorpusConfig())
    S, Cn = corpus.emb["wordllama"], corpus.emb["minilm"]
    Aq = corpus.emb["query_wordllama"]
    n, k, C = len(S), args.k, args.candidates
    bridge = StreamingProcrustes(ProcrustesConfig(d_s=S.shape[1], d_c=Cn.shape[1], refresh_every=args.refresh_every))
    mem = TieredMemory(MemoryConfig(dim=Cn.shape[1], hot_max_items=args.hot, nlist=8, pq_m=args.pq_m,
                                   pq_nbits=args.pq_nbits, nprobe=8))
    rng = np.random.default_rng(0)
    probes = Aq[rng.choice(len(Aq), args.probes, replace=False)]
    audits = {name: OnlineAudit(probes, k, C, rescore=(name == "rescored")) for name in ("pq", "rescored")}
    reports = {name: [] for name in audits}
    for lo in range(0, n, args.batch):
        sl = slice(lo, min(n, lo + args.batch))
        mem.insert(np.arange(sl.start, sl.stop), Cn[sl])
        if bridge.fit_step(torch.from_numpy(S[sl]), torch.from_numpy(Cn[sl])):
            for name, audit in audits.items():
                r = audit.observe(bridge, mem)
                if r is not None:
                    reports[name].append(r.as_metrics(""))
    choice = choose_epsilon(bridge, "interval")
    q, a_norm, u_norm = bridge_queries(bridge, torch.from_numpy(Aq))
    eps_q = query_epsilon(choice, a_norm, u_norm)
    qn = q.numpy().astype(np.float32)
    out = {"items": n, "queries": len(Aq), "k": k, "candidates": C, "refresh_every": args.refresh_every,
           "refreshes": int(bridge.refreshes), "epsilon_source": choice.source, "epsilon": choice.value,
           "epsilon_q_mean": float(eps_q.mean()), "drift_from_reference": bridge.drift_from_reference(),
           "memory": {k_: float(v) for k_, v in mem.stats().items()}}
    for name, rescore in (("pq", False), ("rescored", True)):
        res = mem.search(qn, C, rescore=rescore, record_hits=False)
        cert = certify_search(res, k, eps_q, mem, rescored=rescore)
        cap = certify_search(res, k, eps_q, mem, rescored=rescore, distances="cap")
        pr = probe_recall(mem, qn, k, res.ids[:, :k])
        out[name] = {
            "safe_at_1": float(cert.safe_at_1.double().mean()), f"safe_at_{k}": float(cert.safe_at_k.double().mean()),
            "crude_safe_at_1": float(cert.crude_safe_at_1.double().mean()),
            f"crude_safe_at_{k}": float(cert.crude_safe_at_k.double().mean()),
            "safe_at_1_no_vectors": float(cap.safe_at_1.double().mean()),
            "zeta_max": float(res.zeta_max), "zeta_1_mean": float(cert.zeta_1.mean()),
            "margin_top2_median": float(np.nanmedian(cert.margin_top2.numpy())),
            f"margin_at_{k}_median": float(np.nanmedian(cert.margin_at_k.numpy())),
            "probe_recall": pr.recall, "probe_top1_agreement": pr.top1_agreement,
        }
        tot = audits[name].totals
        out[name]["audit"] = {**tot, "refreshes_audited": len(reports[name]),
                              "flip_rate_uncertified": tot["flips_uncertified"] / max(1, tot["uncertified"]),
                              "epsilon_held_mean": float(np.mean([r["epsilon_held"] for r in reports[name]])) if reports[name] else None}
    # frozen-bridge reference (ε = 0): what ζ alone allows
    res = mem.search(qn, C, rescore=False, record_hits=False)
    c0 = certify_search(res, k, torch.zeros(len(qn), dtype=torch.float64), mem)
    out["pq_frozen_eps0"] = {"safe_at_1": float(c0.safe_at_1.double().mean()), f"safe_at_{k}": float(c0.safe_at_k.double().mean())}
    # what the certificate gives if the bridge's next drift were bounded by a smaller ε ("given")
    sweep = {}
    for name, rescore in (("pq", False), ("rescored", True)):
        res = mem.search(qn, C, rescore=rescore, record_hits=False)
        for eps in (0.0, 1e-3, 1e-2, 0.1):
            e = query_epsilon(choose_epsilon(bridge, "given", eps), a_norm, u_norm)
            c = certify_search(res, k, e, mem, rescored=rescore)
            sweep[f"{name}@eps={eps:g}"] = {"safe_at_1": float(c.safe_at_1.double().mean()),
                                           f"safe_at_{k}": float(c.safe_at_k.double().mean()),
                                           "crude_safe_at_1": float(c.crude_safe_at_1.double().mean()),
                                           f"crude_safe_at_{k}": float(c.crude_safe_at_k.double().mean())}
    out["epsilon_sweep"] = sweep
    if args.adversarial:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "luma_pl", "telemetry"))
        from test_safe_at_k_adversarial import load_real, run_adversarial, tightness

        data = load_real(n_items=len(Cn), n_queries=len(Aq))
        adv = {}
        for center in (False, True):
            r = run_adversarial(data, center, (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 0.1), n_random=4, seed=int(center))
            adv["centred" if center else "linear"] = r
        adv["tightness"] = tightness(data, delta=0.02)
        out["adversarial"] = adv
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    os.makedirs("bench/results", exist_ok=True)
    with open(f"bench/results/safe_at_k_report{args.tag}.json", "w") as f:
        json.dump(out, f, indent=2, default=float)
    lines = ["# Safe@k on the demo stream", "", f"{n} items, {len(Aq)} queries, k={k}, {C} candidates, "
             f"hot {args.hot} exact, warm IVFPQ m={args.pq_m} x {args.pq_nbits} bits; "
             f"refresh every {args.refresh_every} pairs ({out['refreshes']} refreshes); ε = {choice.source} drift "
             f"{choice.value:.4g} (ε_q mean {out['epsilon_q_mean']:.4g})", "",
             f"| scores | Safe@1 | Safe@{k} | crude Safe@1 | crude Safe@{k} | ζ_max | probe recall@{k} | audit violations | flip rate (uncertified) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in ("pq", "rescored"):
        o = out[name]
        lines.append(f"| {name} | {o['safe_at_1']:.3f} | {o[f'safe_at_{k}']:.3f} | {o['crude_safe_at_1']:.3f} | "
                     f"{o[f'crude_safe_at_{k}']:.3f} | {o['zeta_max']:.3f} | {o['probe_recall']:.3f} | "
                     f"{o['audit']['violations']} ({o['audit']['violations_within_epsilon']} within ε) | "
                     f"{o['audit']['flip_rate_uncertified']:.3f} |")
    lines += ["", f"PQ scores with ε = 0 (frozen bridge): Safe@1 {out['pq_frozen_eps0']['safe_at_1']:.3f}, "
              f"Safe@{k} {out['pq_frozen_eps0'][f'safe_at_{k}']:.3f}", ""]
    lines += ["ε sweep (given ε instead of the observed drift):", "",
              f"| scores @ ε | Safe@1 | Safe@{k} | crude Safe@1 | crude Safe@{k} |", "| --- | --- | --- | --- | --- |"]
    for key, o in out["epsilon_sweep"].items():
        lines.append(f"| {key} | {o['safe_at_1']:.3f} | {o[f'safe_at_{k}']:.3f} | {o['crude_safe_at_1']:.3f} | {o[f'crude_safe_at_{k}']:.3f} |")
    lines.append("")
    if "adversarial" in out:
        lines.append(f"Adversarial: {json.dumps(out['adversarial'])}")
    with open(f"bench/results/safe_at_k_report{args.tag}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
