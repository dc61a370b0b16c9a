"""Offline W&B runs for the tests: train.py children with W&B offline, and the readers of
``luma_pl.tracking.offline_run`` under the names the tests use."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

from luma_pl.tracking.offline_run import history as read_wandb_history  # noqa: F401 - tests import it here
from luma_pl.tracking.offline_run import records as wandb_records  # noqa: F401
from luma_pl.tracking.offline_run import run_file  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def offline_fit(shards: Path, run: Path, extra: list[str], overlays: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """train.py fit on ``shards`` at small dims with an offline WandbLogger; ``overlays``: config
    files (``configs/<name>``) layered on default.yaml before the small-dims arguments."""
    args = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "default.yaml"),
            *[a for o in overlays for a in ("--config", str(ROOT / "configs" / o))],
            "--data.root", str(shards), "--data.batch_size", "64",
            "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.save_dir", str(run),
            "--trainer.logger.offline", "true", "--trainer.logger.project", "luma-test",
            "--model.init_args.bridge.d_s", "16", "--model.init_args.bridge.d_c", "24",
            "--model.init_args.bridge.refresh_every", "64",
            "--model.init_args.memory.dim", "24", "--model.init_args.memory.pq_m", "8",
            "--model.init_args.memory.hot_max_items", "200", "--model.init_args.memory.warm_max_items", "400",
            "--model.init_args.memory.nlist", "4", "--trainer.callbacks.dirpath", str(run / "checkpoints"), *extra]
    return run_offline(args, run.parent)


def run_offline(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A child process with W&B offline and its staging / cache folders under ``cwd``."""
    env = dict(os.environ, LUMA_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}",
               WANDB_DATA_DIR=str(cwd / "wandb-data"), WANDB_CACHE_DIR=str(cwd / "wandb-cache"))
    # an in-process W&B run of an earlier test leaves WANDB_SERVICE set: a child would attach to that
    # service, which still holds the first child's run id ("run ID ... is in use")
    env.pop("WANDB_SERVICE", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


def offline_runs(run: Path) -> list[str]:
    return sorted(glob.glob(str(run / "wandb" / "offline-run-*")))


def fit_one_offline_run(tmp_path: Path, extra: list[str] = (), overlays: tuple[str, ...] = ()) -> tuple[Path, str, str]:
    """Write the small test stream, run one offline train.py fit on it; returns (run folder, the W&B
    run's folder, its id)."""
    from test_train_resume import _shards

    _shards(tmp_path / "shards")
    run = tmp_path / "run"
    run.mkdir()
    fit = offline_fit(tmp_path / "shards", run, list(extra), overlays)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (run_dir,) = offline_runs(run)
    return run, run_dir, run_dir.rsplit("-", 1)[1]
