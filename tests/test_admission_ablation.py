"""The ablation and ingest benchmarks run end to end in their quick forms and write their tables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
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


def test_ingest_bench_small(tmp_path):
    res = _load("bench_admission").main(["--n", "600", "--repeats", "1", "--out", str(tmp_path)])
    assert res["pipeline_vec_per_s"] > 0 and res["raw_faiss_vec_per_s"] > 0
    assert res["hot"] + res["warm"] + res["dropped"] == 600
