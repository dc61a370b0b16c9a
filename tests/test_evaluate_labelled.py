"""evaluate.py on a stream that carries labelled query events (``relevant`` lists): each is asked
once, in stream order, scored against its own labels, and never ingested or sampled."""

from __future__ import annotations

import numpy as np
from test_evaluate import _args, _unit

from data_modules.shard_writer import write_blocks
from luma_pl.stream import event_ids

N, D_S, D_C = 640, 16, 24


def _labelled_stream(folder):
    """Items c = Q s (Procrustes recovers Q exactly). From event 320 on, every 8th event is a
    labelled query asking for an earlier item j exactly (its s_j), labelled [key_j, key_r] with r
    another earlier item (so recall is 1/2 where the hit rate is 1); every 4th of those is labelled
    [] (nothing relevant: counted, not scored) and the last one also lists a key that never comes."""
    rng = np.random.default_rng(0)
    s = _unit(rng.standard_normal((N, D_S)))
    q, _ = np.linalg.qr(rng.standard_normal((D_C, D_S)))
    c = _unit(s @ q.T)
    qs = _unit(s + 0.05 * rng.standard_normal((N, D_S)))
    keys = [f"{i:06d}" for i in range(N)]
    relevant: list = [None] * N
    labelled = [i for i in range(320, N, 8)]
    for n, i in enumerate(labelled):
        j, r = rng.choice(np.setdiff1d(np.arange(i), labelled), 2, replace=False)
        qs[i] = s[j]
        relevant[i] = [] if n % 4 == 3 else [keys[j], keys[r]]
    relevant[labelled[-1]] = relevant[labelled[-2]] + ["never-arrives"]
    write_blocks(folder, keys=keys, ts=np.arange(N), emb={"src": s, "dst": c, "query_src": qs},
                 relevant=relevant, block_events=64, events_per_shard=128)
    return keys, labelled, relevant


def test_labelled_queries_are_asked_once_scored_by_their_labels_and_not_ingested(tmp_path):
    from evaluate import run_evaluation

    keys, labelled, relevant = _labelled_stream(tmp_path / "shards")
    summary, cli = run_evaluation(_args(tmp_path / "shards", tmp_path / "run"))
    n_lab = len(labelled)
    assert summary["labelled_queries"] + summary["labelled_unanswered"] == n_lab
    assert summary["labelled_queries"] == n_lab and summary["labelled_unanswered"] == 0  # bridge ready by then
    assert summary["labelled_scored"] == sum(1 for i in labelled if relevant[i])
    # every scored query finds its own item (top-1) and not the other listed one: hit 1, recall 1/2
    # (the last one lists 3 ids, one never arrives: recall 1/3 there)
    assert summary["labelled_hit_rate@5"] > 0.95
    assert 0.45 < summary["labelled_recall@5"] < 0.55
    assert summary["labelled_relevant_unseen"] == 1
    assert summary["labelled_relevant"] == sum(len(set(relevant[i])) for i in labelled)
    # query events are not items: the memory holds exactly the other events
    mem = cli.model.memory
    held = set(mem.ids[: mem.num_keys].tolist())
    assert held == set(event_ids([k for i, k in enumerate(keys) if relevant[i] is None]).tolist())
    assert not held & set(event_ids([keys[i] for i in labelled]).tolist())
    # sampled queries are still asked beside them, from item events only
    assert summary["queries"] > 0 and summary["recall@5"] > 0.9
