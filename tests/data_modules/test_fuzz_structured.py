"""Structure-aware fuzzing of shard content (issue 13): not byte flips (tests/data_modules/test_fuzz_shards.py)
but well-formed files with hostile content: ``events.json`` values of random JSON types and
depths, ``ts.npy``/``<space>.npy`` with random dtypes, NaN/inf/huge/denormal values and headers
whose declared shape the bytes do not back, and ``manifest.json`` with fields replaced by random
JSON values, traversal names and event counts off in either direction.

Per case: loading the manifest either succeeds or raises a ``ValueError`` (a named error), and the
replay never raises, yields exactly its planned batches, and replays or counts every event the
manifest lists (``replayed + events_skipped >= listed``). Over the run, peak RSS stays bounded.
Cases: ``LUMA_STRUCT_FUZZ_CASES`` (default 150 in CI, ~20 s; the closing note of issue 13 quotes a
1,000-case run).
"""

from __future__ import annotations

import io
import json
import os
import resource
import tarfile

import numpy as np
import pytest
from tar_helpers import add_member

from data_modules import ReaderConfig, ReplayConfig, StreamReplayDataset
from data_modules.shard_format import MANIFEST_NAME, load_manifest, scan_manifest

CASES = int(os.environ.get("LUMA_STRUCT_FUZZ_CASES", "150"))
CFG = ReaderConfig(decode_media=False, max_member_bytes=1 << 22)
D = 4


def _json_value(rng, depth: int = 0):
    """A random JSON value: scalars of every type (huge ints, NaN), lists and objects, deep nesting."""
    r = rng.random()
    if depth > 3 or r < 0.4:
        return [None, True, False, 0, -1, 1 << 70, 1.5, float("nan"), float("inf"), "", "x" * 50, "é\u0000"][
            int(rng.integers(0, 12))]
    if r < 0.6:
        return [_json_value(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]
    if r < 0.65:
        return json.loads("[" * 50 + "]" * 50)
    return {str(_json_value(rng, 9)): _json_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))}


def _npy(rng, arr: np.ndarray, forge: bool) -> bytes:
    buf = io.BytesIO()
    if forge:  # a header whose shape is not what follows
        shape = tuple(int(x) for x in rng.choice([0, 1, 3, 7, 1 << 20, 1 << 40], size=int(rng.integers(0, 3))))
        np.lib.format.write_array_header_1_0(buf, {"descr": arr.dtype.str, "fortran_order": False, "shape": shape})
        buf.write(arr.tobytes())
    else:
        np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _values(rng, shape, kind: str) -> np.ndarray:
    x = rng.standard_normal(shape)
    if x.size and rng.random() < 0.3:
        x.flat[int(rng.integers(0, max(x.size, 1)))] = rng.choice([np.nan, np.inf, -np.inf, 1e300, 1e-320, 3e38])
    dtype = {"f": rng.choice(["<f4", "<f8", "<f2"]), "i": rng.choice(["<i8", "<i4", "<u8", "|u1", "|b1"])}[kind]
    with np.errstate(all="ignore"):
        return (x * (1e3 if kind == "i" else 1)).astype(dtype)


def _meta(rng, n: int, prefix: str):
    meta = {"keys": [f"{prefix}{i}" for i in range(n)], "topics": [""] * n, "text": {"txt": ["t"] * n}}
    if rng.random() < 0.5:
        field = str(rng.choice(["keys", "topics", "text", "extra"]))
        meta[field] = _json_value(rng)
    if rng.random() < 0.1:
        return _json_value(rng)
    return meta


def _shard(rng, path, prefix: str) -> int:
    """Write one shard of blocks and event samples with hostile content; returns the events written."""
    events = 0
    with tarfile.open(path, "w") as tar:
        for b in range(int(rng.integers(1, 4))):
            n = int(rng.integers(0, 6))
            key = f"{prefix}b{b}"
            add_member(tar, f"{key}.events.json", json.dumps(_meta(rng, n, f"{key}_")).encode())
            ts = np.arange(n) if rng.random() < 0.6 else _values(rng, (n,), str(rng.choice(["f", "i"])))
            add_member(tar, f"{key}.ts.npy", _npy(rng, np.asarray(ts), rng.random() < 0.15))
            if rng.random() < 0.9:
                shape = (n, D) if rng.random() < 0.8 else (n, int(rng.integers(1, 9)))
                add_member(tar, f"{key}.x.npy", _npy(rng, _values(rng, shape, "f"), rng.random() < 0.15))
            events += n
        for e in range(int(rng.integers(0, 4))):
            key = f"{prefix}e{e}"
            ts = rng.choice(["5", "-3", str(1 << 70), "nan", "1e300", "", " 7 "])
            add_member(tar, f"{key}.ts", str(ts).encode())
            add_member(tar, f"{key}.x.npy", _npy(rng, _values(rng, (D,), "f"), rng.random() < 0.1))
            events += 1
    return events


def _hostile_manifest(rng, folder) -> None:
    manifest = scan_manifest(sorted(folder.glob("f-*.tar")), root=folder)
    manifest.spaces, manifest.media = {"x": D}, ["txt"]
    obj = manifest.to_json()
    r = rng.random()
    if r < 0.15:  # event counts off in either direction
        s = obj["shards"][int(rng.integers(0, len(obj["shards"])))]
        s["events"] = max(0, s["events"] + int(rng.choice([-3, -1, 1, 5, 1000, 10 ** 12])))
    elif r < 0.3:  # a field of random type
        target = obj if rng.random() < 0.5 else obj["shards"][0]
        target[str(rng.choice(list(target)))] = _json_value(rng)
    elif r < 0.35:
        obj["shards"][0]["name"] = str(rng.choice(["../f-000000.tar", "/etc/passwd", "a/../../b.tar"]))
    elif r < 0.4:
        obj = _json_value(rng)
    (folder / MANIFEST_NAME).write_text(json.dumps(obj))


def test_structure_aware_fuzz_counts_every_event_and_never_raises(tmp_path):
    rng = np.random.default_rng(20261203)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused = replayed = skipped = listed = 0
    for case in range(CASES):
        folder = tmp_path / f"c{case}"
        folder.mkdir()
        for i in range(int(rng.integers(1, 3))):
            _shard(rng, folder / f"f-{i:06d}.tar", f"s{i}")
        _hostile_manifest(rng, folder)
        try:
            manifest = load_manifest(folder)
        except ValueError:
            refused += 1  # a named error at the boundary is an allowed outcome
            continue
        try:
            ds = StreamReplayDataset(ReplayConfig(root=str(folder), batch_size=4, reader=CFG), manifest=manifest)
            batches = list(ds)
        except ValueError as err:  # plan_replay: fewer shards than readers, named
            assert "shard" in str(err), (case, err)
            refused += 1
            continue
        except Exception as err:  # noqa: BLE001 - the assertion is that nothing else escapes
            pytest.fail(f"case {case}: the replay raised {type(err).__name__}: {err}")
        assert len(batches) == ds.batches_per_pass(), case
        out = sum(len(b["key"]) for b in batches)
        lost = sum(b["events_skipped"] for b in batches)
        assert out + lost >= manifest.total_events, (case, [(s.code, s.events, s.reason) for s in ds.skips])
        for b in (b for b in batches if "x" in b["emb"]):  # what comes out is usable: finite, in range
            x = b["emb"]["x"][b["has"]["x"]]
            assert bool(np.isfinite(x.numpy()).all()), case
            n = np.linalg.norm(x.numpy().astype(np.float64), axis=1)
            assert ((n >= CFG.min_norm) & (n <= CFG.max_norm)).all(), case
        replayed, skipped, listed = replayed + out, skipped + lost, listed + manifest.total_events
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(f"\nstructured fuzz: {CASES} cases, {refused} refused with a named error, {listed} events listed, "
          f"{replayed} replayed, {skipped} counted as skipped; peak RSS grew {growth_mb:.0f} MB")
    assert refused < CASES and replayed > 0 and skipped > 0
    assert growth_mb < 300, "a hostile size was trusted for an allocation"
