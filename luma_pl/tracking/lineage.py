"""W&B artifacts with lineage: data -> training -> evaluation, online and offline alike.

Artifacts are content-addressed so that two runs that never talked to each other name the same
thing the same way, and W&B's lineage graph joins them when the runs are synced:

- ``shards-<sha256 of manifest.json, 12 hex>`` (type ``dataset``): the replayed shard set, as its
  manifest (the shards themselves stay where they are: a manifest names every shard and its
  event count; ``metadata.root`` says where they were read from). Declared **used** by train.py
  and evaluate.py.
- ``model-<W&B run id of the train run>`` (type ``model``): the stream checkpoint (``model.ckpt``:
  bridge, memory state, replay position), **logged** by train.py at the end of fit with the alias
  ``latest`` (and ``best`` when a ``ModelCheckpoint`` chose it), and **used** by an evaluate.py
  run that replays it (``--model.eval.bridge_checkpoint``): the run id is read from the
  checkpoint (``luma_wandb_run``), and the file is added under the same name, so both runs
  describe the same artifact version (W&B versions an artifact by the digest of its files).
- ``memory-<run id>`` (type ``memory``): the memory snapshot (``luma_pl.memory.save``, one folder
  per rank), logged by train.py.
- ``report-<run id>`` (type ``evaluation``): ``report.json`` and the plots, logged by evaluate.py.

Offline (the default here) W&B refuses ``run.use_artifact`` ("Cannot use artifact when in offline
mode"). ``declare_used`` then records the artifact the way ``use_artifact`` records a new artifact
online: logged with ``use_after_commit``, so ``wandb sync`` uploads it and marks this run as its
user. That goes through ``Run._log_artifact``, the one call into wandb's private API in this
project (tested against the record it writes, so a wandb that changes it fails the test).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CHECKPOINT_NAME = "model.ckpt"
"""The checkpoint's file name inside a model artifact (the same in the run that logs and the run
that uses it, so their digests agree)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_bytes(manifest_json: dict) -> bytes:
    """A manifest as canonical JSON (sorted keys): the same shard set gives the same bytes."""
    return json.dumps(manifest_json, sort_keys=True, separators=(",", ":")).encode()


def shards_artifact(manifest_json: dict, root: str):
    """The ``dataset`` artifact of a shard set (see the module docstring)."""
    import wandb

    blob = manifest_bytes(manifest_json)
    art = wandb.Artifact(f"shards-{hashlib.sha256(blob).hexdigest()[:12]}", type="dataset",
                         description="the replayed shard set (its manifest; the shards stay at metadata.root)",
                         metadata={"root": str(root), "shards": len(manifest_json.get("shards", [])),
                                   "events": sum(int(s.get("events", 0)) for s in manifest_json.get("shards", [])),
                                   "spaces": manifest_json.get("spaces", {}), "media": manifest_json.get("media", [])})
    with art.new_file("manifest.json", mode="wb") as f:
        f.write(blob)
    return art


def checkpoint_artifact(path: str | Path, run_id: str | None, metadata: dict | None = None):
    """The ``model`` artifact of a checkpoint: ``model-<run id of the run that trained it>``, or
    ``model-<sha256 of the file, 12 hex>`` for a checkpoint of a run without W&B."""
    import wandb

    art = wandb.Artifact(f"model-{run_id or sha256_file(path)[:12]}", type="model",
                         description="luma-pl stream checkpoint (bridge, memory state, replay position)",
                         metadata=dict(metadata or {}))
    art.add_file(str(path), name=CHECKPOINT_NAME)
    return art


def files_artifact(paths: str | Path | list, name: str, kind: str, description: str, metadata: dict | None = None):
    """An artifact of a folder (every file under it: a memory snapshot) or of a list of files (an
    evaluation's report and plots, by their file names)."""
    import wandb

    art = wandb.Artifact(name, type=kind, description=description, metadata=dict(metadata or {}))
    if isinstance(paths, (str, Path)):
        art.add_dir(str(paths))
    else:
        for p in paths:
            art.add_file(str(p), name=Path(p).name)
    return art


def declare_used(run, artifact, aliases: list[str] | None = None):
    """Mark ``artifact`` as an input of ``run`` (online: ``use_artifact``; offline: see the module
    docstring)."""
    if not run.offline:
        return run.use_artifact(artifact, aliases=aliases)
    return run._log_artifact(artifact, aliases=aliases, is_user_created=True, use_after_commit=True)


def declare_logged(run, artifact, aliases: list[str] | None = None):
    """Mark ``artifact`` as an output of ``run``."""
    return run.log_artifact(artifact, aliases=aliases)


