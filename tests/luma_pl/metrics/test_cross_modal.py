"""Cross-modal retrieval in both directions against open_clip's own ``get_clip_metrics`` (one
caption per image) and against loop-by-loop definitions (several captions per image)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from open_clip_train.train import get_clip_metrics

from luma_pl.metrics.cross_modal import direction_metrics, retrieval_both_directions


def _unit(x):
    return torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1)


def test_hand_made_case_equals_get_clip_metrics_both_directions():
    # 4 images, 4 captions; image i's caption is i. Scores by hand through 2-d unit vectors at angles:
    # caption 1 is nearer image 0 than caption 0 is, caption 3 sits between images 2 and 3
    ang_img = np.radians([0, 40, 100, 170])
    ang_txt = np.radians([15, 5, 95, 140])
    img = _unit(np.stack([np.cos(ang_img), np.sin(ang_img)], 1))
    txt = _unit(np.stack([np.cos(ang_txt), np.sin(ang_txt)], 1))
    ref = get_clip_metrics(img, txt, torch.tensor(1.0))
    ours = retrieval_both_directions(img, txt, np.arange(4), names=("image", "text"))
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            assert ours[f"{direction}/R@{k}"] == pytest.approx(float(ref[f"{direction}_R@{k}"]))
            assert ours[f"{direction}/recall@{k}"] == pytest.approx(float(ref[f"{direction}_R@{k}"]))  # one relevant
        assert ours[f"{direction}/mean_rank"] == pytest.approx(float(ref[f"{direction}_mean_rank"]))
        assert ours[f"{direction}/median_rank"] == float(ref[f"{direction}_median_rank"])
    # by hand (angular distances): image 0 is nearest caption 1 (5° vs 15°), image 1 nearest caption 0
    # (25° vs 35°); images 2 and 3 find their own. Caption 1 (5°) is nearest image 0; the rest find theirs
    assert ours["image_to_text/R@1"] == 0.5 and ours["image_to_text/mean_rank"] == 1.5
    assert ours["image_to_text/median_rank"] == 1.0  # floor(median([1, 1, 0, 0])) + 1
    assert ours["text_to_image/R@1"] == 0.75 and ours["text_to_image/mean_rank"] == 1.25


@pytest.mark.parametrize("seed", range(4))
def test_random_sets_equal_get_clip_metrics(seed):
    g = torch.Generator().manual_seed(seed)
    img = _unit(torch.randn(37, 8, generator=g))
    txt = _unit(img + 0.9 * torch.randn(37, 8, generator=g))
    ref = get_clip_metrics(img, txt, torch.tensor(100.0))
    ours = retrieval_both_directions(img, txt, np.arange(37), names=("image", "text"), chunk=5)
    assert len(ref) == 10
    for direction in ("image_to_text", "text_to_image"):
        for metric in ("R@1", "R@5", "R@10", "mean_rank", "median_rank"):
            assert ours[f"{direction}/{metric}"] == pytest.approx(float(ref[f"{direction}_{metric}"])), metric


def _loop_reference(scores: np.ndarray, relevant: list[set], k: int) -> dict:
    out = {"R": [], "recall": [], "rank": []}
    for q, rel in enumerate(relevant):
        order = sorted(range(scores.shape[1]), key=lambda j: (-scores[q, j], j))
        first = next(r for r, j in enumerate(order, 1) if j in rel)
        top = set(order[:k])
        out["R"].append(float(first <= k))
        out["recall"].append(len(top & rel) / len(rel))
        out["rank"].append(first)
    return {"R": np.mean(out["R"]), "recall": np.mean(out["recall"]), "mean_rank": np.mean(out["rank"]),
            "median_rank": math.floor(np.median(np.array(out["rank"]) - 1)) + 1}


def test_five_captions_per_image_both_directions_against_the_loop_definitions():
    rng = np.random.default_rng(0)
    n_img, per = 12, 5
    img = _unit(rng.standard_normal((n_img, 6)))
    b_to_a = np.repeat(np.arange(n_img), per)
    rng.shuffle(b_to_a)
    txt = _unit(img[b_to_a] + 0.8 * torch.as_tensor(rng.standard_normal((len(b_to_a), 6)), dtype=torch.float32))
    ours = retrieval_both_directions(img, txt, b_to_a, ks=(1, 5), names=("image", "text"))
    s = (img @ txt.T).numpy()
    i2t = [set(np.flatnonzero(b_to_a == i).tolist()) for i in range(n_img)]
    t2i = [{int(b_to_a[j])} for j in range(len(b_to_a))]
    for k in (1, 5):
        ref_i2t, ref_t2i = _loop_reference(s, i2t, k), _loop_reference(s.T, t2i, k)
        assert ours[f"image_to_text/R@{k}"] == pytest.approx(ref_i2t["R"])
        assert ours[f"image_to_text/recall@{k}"] == pytest.approx(ref_i2t["recall"])  # true recall over 5
        assert ours[f"text_to_image/R@{k}"] == pytest.approx(ref_t2i["R"])
    assert ours["image_to_text/recall@5"] < ours["image_to_text/R@5"]  # several relevant: recall < hit rate
    for direction, ref in (("image_to_text", _loop_reference(s, i2t, 1)), ("text_to_image", _loop_reference(s.T, t2i, 1))):
        assert ours[f"{direction}/mean_rank"] == pytest.approx(ref["mean_rank"])
        assert ours[f"{direction}/median_rank"] == ref["median_rank"]


def test_bad_pairings_name_the_problem():
    a, b = _unit(torch.randn(3, 4)), _unit(torch.randn(3, 4))
    with pytest.raises(ValueError, match="1 a rows have no b row \\(first: 2\\)"):
        retrieval_both_directions(a, b, [0, 1, 1])
    with pytest.raises(ValueError, match="one index in \\[0, 3\\)"):
        retrieval_both_directions(a, b, [0, 1, 3])
    with pytest.raises(ValueError, match="same d"):
        retrieval_both_directions(a, _unit(torch.randn(3, 5)), [0, 1, 2])
    with pytest.raises(ValueError, match="query 0 has no relevant item"):
        direction_metrics(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool))
