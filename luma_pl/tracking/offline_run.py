"""Read an offline W&B run back from its files, without syncing it: ``python -m
luma_pl.tracking.offline_run <run dir> [...]`` prints each run's name, group, job type, tags,
config keys, artifacts (used / logged, with aliases and digests) and last metrics.

wandb 0.31 ships no Python reader for its ``.wandb`` transaction log (the Go core writes it), so
``records`` reads the container itself: a 7-byte header (``:W&B``, magic, version), then the
LevelDB log format (32 KiB blocks of chunks: crc32c (4), length (2, LE), type (1: FULL, 2: FIRST,
3: MIDDLE, 4: LAST), payload), each whole payload one ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import struct

BLOCK = 32768
HEADER = 7


def run_file(run_dir: str) -> str:
    """The ``.wandb`` transaction log of an offline run folder."""
    found = glob.glob(os.path.join(str(run_dir), "*.wandb"))
    if len(found) != 1:
        raise FileNotFoundError(f"run_dir={str(run_dir)!r} holds {len(found)} .wandb files, expected 1; pass an "
                                "offline-run-<time>-<id> folder (under <save_dir>/wandb/)")
    return found[0]


def records(path: str):
    """The records of a ``.wandb`` file, in order, as wandb's protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b":W&B":
        raise ValueError(f"path={path!r} is not a W&B transaction log (no ':W&B' header); pass a run's .wandb file")
    pos, buf = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
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


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def history(run_dir: str) -> list[dict]:
    """Every history row of an offline run (key -> decoded JSON value)."""
    return [{_key(item): json.loads(item.value_json) for item in rec.history.item}
            for rec in records(run_file(run_dir)) if rec.WhichOneof("record_type") == "history"]


def describe(run_dir: str) -> dict:
    """Name, group, job type, tags, config, artifacts and the last value of every metric of a run."""
    out = {"run_dir": str(run_dir), "config": {}, "artifacts": [], "metrics": {}}
    for rec in records(run_file(run_dir)):
        kind = rec.WhichOneof("record_type")
        if kind == "run" and "id" not in out:
            r = rec.run
            out.update(id=r.run_id, name=r.display_name, group=r.run_group, job_type=r.job_type, tags=list(r.tags),
                       resumed=bool(r.resumed))
        elif kind == "config":
            for item in rec.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "artifact" and rec.artifact.type != "run_table":  # W&B's own wandb.Table storage
            a = rec.artifact
            out["artifacts"].append({"how": "used" if a.use_after_commit else "logged", "name": a.name, "type": a.type,
                                     "aliases": list(a.aliases), "digest": a.digest,
                                     "files": len(a.manifest.contents)})
        elif kind == "use_artifact":
            out["artifacts"].append({"how": "used", "name": rec.use_artifact.name, "type": rec.use_artifact.type})
        elif kind == "history":
            out["metrics"].update({_key(i): json.loads(i.value_json) for i in rec.history.item
                                   if not _key(i).startswith("_")})
    out["config"].pop("_wandb", None)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m luma_pl.tracking.offline_run", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", help="offline-run-<time>-<id> folders")
    p.add_argument("--metrics", nargs="*", default=[], help="metrics to print (default: none)")
    args = p.parse_args(argv)
    for run_dir in args.run_dirs:
        d = describe(run_dir)
        print(f"{d['run_dir']}\n  id {d.get('id')}  name {d.get('name')!r}  group {d.get('group')!r}  "
              f"job_type {d.get('job_type')!r}  tags {d.get('tags')}")
        groups = sorted({k.split(".")[0] for k in d["config"]})
        print(f"  config: {len(d['config'])} keys, groups {groups}")
        for a in d["artifacts"]:
            print(f"  {a['how']:<6} {a['type']:<10} {a['name']}  aliases {a.get('aliases', [])}  "
                  f"digest {str(a.get('digest'))[:12]}  files {a.get('files')}")
        for m in args.metrics:
            print(f"  {m} = {d['metrics'].get(m)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
