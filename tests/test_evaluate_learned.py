"""evaluate.py replays a learned bridge trained by train.py (any kind), frozen or still learning.

The checkpoint's bridge is rebuilt from its own config (kind, dims); frozen, its weights stay the
checkpoint's; learning, it takes one AdamW step per replayed batch from the checkpoint's optimizer
state (Adam's step count continues) at its one learning rate ``bridge.lr``; ε is its certified
drift over ``refresh_every`` steps, and a GELU MLP (no certified bound) certifies nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.shard_writer import write_blocks

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.yaml"
D_S, D_C = 16, 24


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_stream(folder: Path, n: int = 640, seed: int = 0) -> None:
    """Items c = Q s (Q semi-orthogonal) with a little noise; queries = noisy s. Spaces are named as
    in default.yaml so its callbacks and the evaluator read them unchanged."""
    rng = np.random.default_rng(seed)
    s = _unit(rng.standard_normal((n, D_S)))
    q, _ = np.linalg.qr(rng.standard_normal((D_C, D_S)))
    c = _unit(s @ q.T + 0.02 * rng.standard_normal((n, D_C)))
    qs = _unit(s + 0.05 * rng.standard_normal((n, D_S)))
    write_blocks(folder, keys=[f"{i:06d}" for i in range(n)], ts=np.arange(n),
                 emb={"wordllama": s, "minilm": c, "query_wordllama": qs}, block_events=64, events_per_shard=128)


def train_learned(tmp_path: Path, shards: Path, kind: str, extra: list[str] = ()) -> Path:
    """train.py fit with default.yaml + configs/bridge_<kind>.yaml at small dims; returns last.ckpt."""
    from train import cli_main

    run = tmp_path / f"train_{kind}"
    base = "mlp" if kind.startswith("mlp") else kind
    cli_main(["fit", "--config", str(DEFAULT), "--config", str(ROOT / "configs" / f"bridge_{base}.yaml"),
              "--data.root", str(shards), "--data.batch_size", "64", "--trainer.max_epochs", "3",
              "--trainer.default_root_dir", str(run), "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.callbacks.dirpath", str(run / "checkpoints"),
              "--model.init_args.bridge.d_s", str(D_S), "--model.init_args.bridge.d_c", str(D_C),
              "--model.init_args.bridge.hidden", "16", "--model.init_args.bridge.lr", "0.02",
              "--model.init_args.memory.dim", str(D_C), "--model.init_args.memory.pq_m", "8", *extra])
    return run / "checkpoints" / "last.ckpt"


def eval_args(shards: Path, out: Path, ckpt: Path, extra: list[str] = ()) -> list[str]:
    return ["--config", str(ROOT / "configs" / "eval_default.yaml"), "--data.root", str(shards),
            "--data.batch_size", "64", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(out), "--model.eval.k", "5",
            "--model.eval.report_dir", str(out / "report"), "--model.eval.bridge_checkpoint", str(ckpt),
            "--model.memory.dim", str(D_C), "--model.memory.pq_m", "8", "--model.memory.hot_backend", "flat",
            "--model.memory.hot_max_items", "100000", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("learned")
    write_stream(tmp / "shards")
    return tmp, {kind: train_learned(tmp, tmp / "shards", kind) for kind in ("linear", "mlp")}


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith("net.")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_learned_bridge_replays_frozen_and_still_learning(trained, tmp_path, kind):
    from evaluate import run_evaluation
    from luma_pl.bridge.learned import LearnedBridge

    tmp, ckpts = trained
    ckpt = torch.load(ckpts[kind], map_location="cpu", weights_only=True)
    saved = {k[len("bridge."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("bridge.net.")}
    trained_steps = int(ckpt["optimizer_states"][0]["state"][0]["step"])

    frozen, cli = run_evaluation(eval_args(tmp / "shards", tmp_path / "frozen", ckpts[kind], [
        "--model.eval.fit_bridge", "false", "--model.eval.epsilon_source", "frozen"]))
    ev = cli.model
    assert isinstance(ev.bridge, LearnedBridge) and ev.stream_bridge.kind == kind
    assert all(torch.equal(v, saved[k]) for k, v in _weights(ev.bridge).items())  # not one step taken
    assert frozen["events"] == 640 and frozen["queries"] > 0
    assert frozen["recall@5"] > 0.8  # the trained map finds the events' own items
    assert frozen["safe@1"] > 0  # ε = 0 for a frozen bridge: exact memory, so answers certify

    learning, cli = run_evaluation(eval_args(tmp / "shards", tmp_path / "learning", ckpts[kind], [
        "--model.eval.fit_bridge", "true"]))
    ev = cli.model
    assert any(not torch.equal(v, saved[k]) for k, v in _weights(ev.bridge).items())
    # Adam continued from the checkpoint's moments: its step count went on from train.py's
    steps = int(ev.stream_bridge.optimizer.state_dict()["state"][0]["step"])
    assert steps == trained_steps + 10  # 640 events / 64 per batch
    assert int(ev.bridge.refreshes) >= 1 and learning["epsilon_source"] == "interval"
    assert np.isfinite(learning["epsilon_last"]) and learning["epsilon_last"] > 0
    assert learning["recall@5"] > 0.8
    report = (tmp_path / "learning" / "report" / "report.json").read_text()
    assert f'"bridge_kind": "{kind}"' in report


@pytest.mark.slow
def test_a_gelu_mlp_replays_without_a_certificate(trained, tmp_path):
    from evaluate import run_evaluation

    tmp, _ = trained
    ckpt = train_learned(tmp_path, tmp / "shards", "mlp_gelu", ["--model.init_args.bridge.activation", "gelu"])
    summary, cli = run_evaluation(eval_args(tmp / "shards", tmp_path / "gelu", ckpt))
    assert cli.model.bridge.config.activation == "gelu"
    assert summary["recall@5"] > 0.5 and summary["queries"] > 0
    # no certified drift bound: ε is unknown (inf), so no answer is certified
    assert summary["safe@1"] == 0.0 and summary["safe@5"] == 0.0


def test_a_checkpoint_with_a_hostile_bridge_config_is_refused(tmp_path):
    from luma_pl.evaluation.stream_eval import StreamEvaluator

    bad = {"state_dict": {"bridge.W": torch.zeros(2, 2), "bridge._extra_state": {"config": "not a dict"}}}
    torch.save(bad, tmp_path / "bad.ckpt")
    ev = StreamEvaluator(eval={"bridge_checkpoint": str(tmp_path / "bad.ckpt"), "report_dir": None},
                         memory={"dim": 4, "pq_m": 2})
    with pytest.raises(ValueError, match=r"bridge_checkpoint=.*bad.ckpt'.*no config.*str"):
        ev.setup("test")
    bad["state_dict"]["bridge._extra_state"] = {"config": {"kind": "linear", "d_s": "sixteen"}}
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"bridge_checkpoint=.*cannot be rebuilt.*d_s"):
        ev.setup("test")


def _run_cli(args: list[str], cwd: Path) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, LUMA_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((Path(args[args.index("--model.eval.report_dir") + 1]) / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("learn", [False, True])
def test_a_learned_bridge_replays_the_same_on_two_ddp_ranks(trained, tmp_path, learn):
    """Frozen: the same numbers as one process, exactly. Learning: each rank takes its share of the
    anchor pairs, the loss is the global batch's and the gradients are averaged, so the ranks take
    the step one process takes up to float32 summation order."""
    tmp, ckpts = trained
    extra = ["--model.eval.certificate_distances", "cap", "--trainer.accelerator", "cpu",
             "--model.eval.fit_bridge", str(learn).lower()]
    if not learn:
        extra += ["--model.eval.epsilon_source", "frozen"]
    one = _run_cli(eval_args(tmp / "shards", tmp_path / "one", ckpts["linear"], extra + ["--trainer.devices", "1"]),
                   tmp_path)
    two = _run_cli(eval_args(tmp / "shards", tmp_path / "two", ckpts["linear"], extra + [
        "--trainer.devices", "2", "--trainer.strategy", "ddp"]), tmp_path)
    assert two["config"]["world_size"] == 2 and one["config"]["bridge_kind"] == "linear"
    tol = {"rel": 1e-9, "abs": 1e-12} if not learn else {"rel": 1e-3, "abs": 2e-2}
    for key in ("queries", "events", "recall@5", "mrr@5", "safe@1", "safe@5", "old_hit_rate"):
        assert two["summary"][key] == pytest.approx(one["summary"][key], **tol), key
    if learn:
        assert two["summary"]["epsilon_last"] == pytest.approx(one["summary"]["epsilon_last"], rel=1e-2)
