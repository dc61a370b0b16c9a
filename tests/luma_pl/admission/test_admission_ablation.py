"""The ablation and ingest benchmarks run end to end in their quick forms and write their tables."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_ablation_quick(tmp_path):
    res = _load("admission_ablation").main(["--quick", "--out", str(tmp_path)])
    rows = {r["name"]: r for r in res["rows"]}
    assert {"space_saving / static", "prototypes (space_saving)", "keep_all", "reservoir"} <= set(rows)
    for r in rows.values():
        assert 0.0 <= r["recall_interleaved"] <= 1.0 and 0.0 <= r["ndcg_final"] <= r["recall_final"] + 1e-9
        assert r["held"] <= res["meta"]["events"]
    assert rows["keep_all"]["recall_final"] >= max(r["recall_final"] for r in rows.values()) - 1e-9
    # every event is held, evicted (counted) or dropped (counted) in items mode
    ss = rows["space_saving / static"]
    assert ss["held"] + ss["evicted"] + ss["dropped"] == res["meta"]["events"]
    data = json.loads((tmp_path / "admission_ablation_quick.json").read_text())
    assert data["rows"] and (tmp_path / "admission_ablation_quick.md").exists()


@pytest.mark.slow
def test_ablation_quick_skewed(tmp_path):
    # the Zipf stream: items repeat, the budget is a fraction of the distinct items, every event is
    # still held, evicted or dropped (counted), and any copy of the asked item counts as the answer
    res = _load("admission_ablation").main(["--quick", "--popularity", "zipf", "--out", str(tmp_path)])
    meta, rows = res["meta"], {r["name"]: r for r in res["rows"]}
    assert meta["distinct"] < meta["events"] == 1024
    assert meta["budget_items"] == meta["hot_items"] + meta["warm_items"] < meta["distinct"]
    ss = rows["space_saving / static"]
    assert ss["held"] + ss["evicted"] + ss["dropped"] == meta["events"] and ss["held"] <= meta["budget_items"]
    assert rows["keep_all"]["held"] == meta["events"]
    assert 0.0 < ss["recall_final"] <= 1.0
    assert (tmp_path / "admission_ablation_quick_zipf.md").read_text().startswith("# Admission ablation, skewed")


def test_ingest_bench_small(tmp_path):
    res = _load("bench_admission").main(["--n", "600", "--repeats", "1", "--out", str(tmp_path)])
    assert res["pipeline_vec_per_s"] > 0 and res["raw_faiss_vec_per_s"] > 0
    assert res["hot"] + res["warm"] + res["dropped"] == 600


def test_ingest_bench_steady_state_small(tmp_path):
    # a full hot tier: arrivals push older items to warm; every row is still hot, warm or dropped
    res = _load("bench_admission").main(["--n", "600", "--repeats", "1", "--hot-frac", "0.1", "--out", str(tmp_path)])
    assert res["hot"] == 60 and res["demotions"] > 0
    assert res["hot"] + res["warm"] + res["dropped"] == 600
    assert (tmp_path / "admission_bench_hot0.1.md").exists()
