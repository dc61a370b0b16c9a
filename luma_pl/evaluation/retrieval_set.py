"""Both-direction retrieval on a test set written by ``build_shards retrieval`` (or any shards whose
caption events are labelled queries ``relevant = [item key]``).

``python -m luma_pl.evaluation.retrieval_set --root SHARDS --items clip --queries clip_text``
prints, as JSON, ``<items>_to_<queries>/*`` (media -> captions: several relevant) and
``<queries>_to_<items>/*`` (caption -> media) R@1/5/10, true recall@k, mrr, ndcg, mean and median
rank (``luma_pl.metrics.cross_modal``). ``--bridge-checkpoint CKPT`` maps the query side through a
train.py bridge first (e.g. CLAP audio or CLAP text into CLIP space: audio -> image, audio -> text);
the checkpoint is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def load_pairs(root: str, items: str, queries: str):
    """(item vectors (N_a, d_a), query vectors (N_b, d_b), b_to_a (N_b,), counts) from the shards:
    items are events without a label that have ``items``; queries are labelled events with
    ``queries`` whose first relevant id is one of the items (others are counted, not scored)."""
    from data_modules import ReaderConfig, ReplayConfig, StreamReplayDataset

    ds = StreamReplayDataset(ReplayConfig(root=root, batch_size=1024, reader=ReaderConfig(decode_media=False)))
    a, a_ids, b, b_rel = [], [], [], []
    for batch in ds:
        if not len(batch["key"]):
            continue
        for space in (items, queries):
            if space not in batch["emb"]:
                raise ValueError(f"root={root!r} has no space {space!r}; its spaces are {sorted(batch['emb'])}")
        rel = batch.get("relevant", [None] * len(batch["key"]))
        has_a, has_b = batch["has"][items].numpy(), batch["has"][queries].numpy()
        for i, r in enumerate(rel):
            if r is None and has_a[i]:
                a.append(batch["emb"][items][i].numpy())
                a_ids.append(int(batch["id"][i]))
            elif r is not None and has_b[i] and len(r):
                b.append(batch["emb"][queries][i].numpy())
                b_rel.append(int(r[0]))
    index = {i: n for n, i in enumerate(a_ids)}
    keep = [n for n, r in enumerate(b_rel) if r in index]
    counts = {"items": len(a), "queries": len(keep), "queries_without_item": len(b_rel) - len(keep)}
    if not a or not keep:
        raise ValueError(f"root={root!r}: {counts}; nothing to score (are the caption events labelled queries?)")
    b_to_a = np.array([index[b_rel[n]] for n in keep], np.int64)
    return np.stack(a), np.stack([b[n] for n in keep]), b_to_a, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m luma_pl.evaluation.retrieval_set", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="shard folder (build_shards retrieval)")
    p.add_argument("--items", required=True, help="space of the media items, e.g. clip")
    p.add_argument("--queries", required=True, help="space of the caption queries, e.g. clip_text")
    p.add_argument("--bridge-checkpoint", default=None, help="train.py checkpoint whose bridge maps the queries first")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    args = p.parse_args(argv)
    from luma_pl.metrics.cross_modal import retrieval_both_directions

    a, b, b_to_a, counts = load_pairs(args.root, args.items, args.queries)
    if args.bridge_checkpoint:
        from luma_pl.evaluation.stream_eval import load_checkpoint_safely
        from luma_pl.stream.bridge import bridge_from_state
        from luma_pl.telemetry.safe_at_k import bridge_queries

        ckpt = load_checkpoint_safely(args.bridge_checkpoint, "--bridge-checkpoint")
        state = {k[len("bridge."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("bridge.")}
        bridge = bridge_from_state(state, f"--bridge-checkpoint={args.bridge_checkpoint!r}")
        with torch.no_grad():
            b = bridge_queries(bridge, torch.from_numpy(b))[0].numpy()
    out = retrieval_both_directions(a, b, b_to_a, ks=args.ks, names=(args.items, args.queries))
    print(json.dumps({**counts, **out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
