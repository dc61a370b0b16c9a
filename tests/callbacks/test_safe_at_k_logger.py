"""SafeAtKLogger in a real Trainer: values logged to offline W&B files and CSV equal the computed ones."""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np
import pytest
import torch
from wandb_helpers import read_wandb_history

DT_EVENTS = 1500


def _batches(n_events: int, bs: int):
    from luma_pl.corpus import DemoCorpusConfig, build_demo_corpus

    emb = build_demo_corpus(DemoCorpusConfig()).emb
    out = []
    for lo in range(0, n_events, bs):
        sl = slice(lo, min(lo + bs, n_events))
        e = {name: torch.from_numpy(emb[name][sl]) for name in ("wordllama", "minilm", "query_wordllama")}
        n = sl.stop - sl.start
        out.append({"key": [str(i) for i in range(sl.start, sl.stop)], "ts": torch.arange(sl.start, sl.stop),
                    "topic": [""] * n, "emb": e, "has": {k: torch.ones(n, dtype=torch.bool) for k in e},
                    "media": {}, "skipped": 0, "padding": False})
    return out


def _identity(x):
    return x


@pytest.mark.slow
def test_logger_writes_checked_values_to_offline_wandb_and_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from callbacks.safe_at_k_logger import SafeAtKLogger
    from luma_pl.modules.bridge_module import ProcrustesBridgeModule

    batches = _batches(DT_EVENTS, 100)
    module = ProcrustesBridgeModule(bridge={"d_s": 256, "d_c": 384, "refresh_every": 300})
    cb = SafeAtKLogger(k=10, candidates=20, num_probes=100, recall_probes=50, table_rows=4,
                       memory={"hot_max_items": 300, "nlist": 4, "pq_m": 48, "pq_nbits": 4})
    wb = WandbLogger(offline=True, save_dir=str(tmp_path), project="luma-test")
    csv = CSVLogger(str(tmp_path), name="csv")
    trainer = Trainer(max_epochs=1, logger=[wb, csv], callbacks=[cb], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      accelerator="cpu", devices=1, log_every_n_steps=1)
    from torch.utils.data import DataLoader

    def loader(items):
        return DataLoader(items, batch_size=None, shuffle=False, collate_fn=_identity)

    trainer.fit(module, train_dataloaders=loader(batches), val_dataloaders=loader(batches[:3]))
    mem = cb.memory_of(module)
    assert mem.warm.trained  # PQ warm tier in play: zeta > 0
    audit = cb._audit
    assert audit is not None and audit.refreshes >= 4
    assert audit.totals["violations_within_epsilon"] == 0

    # recompute the final validation telemetry independently
    expected, cert, _, _ = cb.compute(module)
    assert expected["zeta_max"] > 0
    assert 0 <= expected["safe_at_1"] <= 1 and math.isfinite(expected["epsilon"])
    got = cb.last_metrics
    for key in ("safe_at_1", "safe_at_k", "crude_safe_at_1", "epsilon", "zeta_max", "probe_recall"):
        assert got["val_safe/" + key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12)
    assert expected["safe_at_1"] == pytest.approx(float(cert.safe_at_1.double().mean()))
    wb.experiment.finish()

    # --- W&B offline files: history records decoded from the .wandb file
    run_dir = glob.glob(os.path.join(str(tmp_path), "wandb", "offline-run-*"))[0]
    # wandb-core may still be appending after finish() returns: poll until the file stops changing
    import time

    size, deadline = -1, time.monotonic() + 30
    wfile = glob.glob(os.path.join(run_dir, "*.wandb"))[0]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if os.path.getsize(wfile) == size and any("val_safe/samples/_type" in r for r in read_wandb_history(run_dir)):
            break
        size = os.path.getsize(wfile)
    rows = read_wandb_history(run_dir)
    val_rows = [r for r in rows if "val_safe/safe_at_1" in r]
    assert val_rows, "no val_safe row in the W&B history"
    last = val_rows[-1]
    for key in ("safe_at_1", "safe_at_k", "epsilon", "zeta_max", "probe_recall", "violations"):
        assert last["val_safe/" + key] == pytest.approx(got["val_safe/" + key], rel=1e-9, abs=1e-12)
    train_rows = [r for r in rows if "safe/safe_at_1" in r]
    assert len(train_rows) >= 4  # one per refresh
    assert any("safe/audit_violations" in r for r in train_rows)
    # nested values come back flattened as key/field
    hist = [r for r in rows if "val_safe/margin_top2_hist/_type" in r]
    assert hist and hist[-1]["val_safe/margin_top2_hist/_type"] == "histogram"
    assert sum(hist[-1]["val_safe/margin_top2_hist/values"]) == int(np.isfinite(cert.margin_top2.numpy()).sum())
    tables = [r for r in rows if "val_safe/samples/_type" in r]
    assert tables and tables[-1]["val_safe/samples/_type"] == "table-file"
    table_path = os.path.join(run_dir, "files", tables[-1]["val_safe/samples/path"])
    table = json.load(open(table_path))
    assert table["columns"][:2] == ["probe", "hits"] and len(table["data"]) == 4
    assert table["data"][0][8] == bool(cert.safe_at_1[0]) and table["data"][0][9] == bool(cert.safe_at_k[0])
    summary = json.load(open(os.path.join(run_dir, "files", "wandb-summary.json"))) \
        if os.path.exists(os.path.join(run_dir, "files", "wandb-summary.json")) else None
    if summary is not None and "val_safe/safe_at_1" in summary:
        assert summary["val_safe/safe_at_1"] == pytest.approx(got["val_safe/safe_at_1"])

    # --- CSV
    import csv as csvmod

    path = glob.glob(os.path.join(str(tmp_path), "csv", "version_*", "metrics.csv"))[0]
    with open(path) as f:
        csv_rows = list(csvmod.DictReader(f))
    vals = [r for r in csv_rows if r.get("val_safe/safe_at_1")]
    assert float(vals[-1]["val_safe/safe_at_1"]) == pytest.approx(got["val_safe/safe_at_1"])
    assert float(vals[-1]["val_safe/epsilon"]) == pytest.approx(got["val_safe/epsilon"])

    # --- state round trip (tensors and primitives only)
    state = cb.state_dict()
    torch.save(state, tmp_path / "cb.pt")
    loaded = torch.load(tmp_path / "cb.pt", weights_only=True)
    cb2 = SafeAtKLogger()
    cb2.load_state_dict(loaded)
    assert torch.equal(cb2.probes, cb.probes)
    cb2.load_state_dict({})  # missing keys take defaults
    assert cb2.probes is None
    np.testing.assert_equal(cb2._seen_refreshes, 0)


@pytest.mark.slow
def test_logger_certifies_a_learned_bridge(tmp_path):
    """A LearnedBridgeModule (linear) under the same logger: ε is the learned map's certified change
    over the last refresh_every optimizer steps, the audit sees no violation, and the logged values
    equal an independent recomputation."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from callbacks.safe_at_k_logger import SafeAtKLogger
    from luma_pl.modules.learned_bridge_module import LearnedBridgeModule

    batches = _batches(DT_EVENTS, 100)
    torch.manual_seed(0)  # the bridge's initial weights; a small learning rate keeps ε ~1.5e-3 (certifiable)
    module = LearnedBridgeModule(bridge={"kind": "linear", "d_s": 256, "d_c": 384, "refresh_every": 3,
                                         "lr": 1e-5})
    cb = SafeAtKLogger(k=10, candidates=20, num_probes=100, recall_probes=50, table_rows=4,
                       memory={"hot_max_items": 2000, "nlist": 4, "pq_m": 48, "pq_nbits": 4})  # exact: ζ = 0
    trainer = Trainer(max_epochs=1, logger=[CSVLogger(str(tmp_path), name="csv")], callbacks=[cb],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, accelerator="cpu", devices=1, log_every_n_steps=1)

    def loader(items):
        return DataLoader(items, batch_size=None, shuffle=False, collate_fn=_identity)

    trainer.fit(module, train_dataloaders=loader(batches), val_dataloaders=loader(batches[:3]))
    bridge = module.bridge
    assert int(bridge.refreshes) == DT_EVENTS // 100 // 3 and math.isfinite(bridge.epsilon()) and bridge.epsilon() > 0
    audit = cb._audit
    # answers are certified (exact items, a small ε) and none of them flipped at the next refresh
    assert audit is not None and audit.refreshes >= 3 and audit.totals["certified"] > 100
    assert audit.totals["violations"] == 0
    expected, cert, _, choice = cb.compute(module)
    assert choice.source == "interval" and choice.value == bridge.epsilon() and not choice.affine
    got = cb.last_metrics
    for key in ("safe_at_1", "safe_at_k", "epsilon", "zeta_max"):
        assert got["val_safe/" + key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12)
    assert 0 <= expected["safe_at_k"] <= expected["safe_at_1"] <= 1 and expected["safe_at_1"] > 0.5
