"""Offline W&B runs read back from their files: records, history rows, the run's config."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wandb_records(path: str):
    """Records of an offline ``.wandb`` file as wandb's own protobuf ``Record`` messages.

    wandb 0.31 no longer ships a Python reader (``wandb.sdk.internal.datastore`` is gone; the Go core
    writes the file), so this reads the container directly: a 7-byte header (``:W&B``, magic, version)
    then the LevelDB log format (32 KiB blocks; chunks of crc32c(4) length(2 LE) type(1) payload,
    type FULL=1 FIRST=2 MIDDLE=3 LAST=4), and decodes each payload with ``wandb_internal_pb2.Record``.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding at the end of a block
            pos += left
            continue
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            buf = payload
        elif kind in (2, 3):
            buf = (b"" if kind == 2 else buf) + payload
            continue
        elif kind == 4:
            buf += payload
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(buf)
        buf = b""
        yield rec


def read_wandb_history(run_dir: str) -> list[dict]:
    """Every history row of an offline run (key -> decoded JSON value)."""
    path = glob.glob(os.path.join(run_dir, "*.wandb"))[0]
    rows = []
    for rec in wandb_records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in rec.history.item})
    return rows


def run_file(run_dir: str) -> str:
    """The ``.wandb`` transaction log of an offline run folder."""
    (path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
    return path


def offline_fit(shards: Path, run: Path, extra: list[str]) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "default.yaml"),
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
