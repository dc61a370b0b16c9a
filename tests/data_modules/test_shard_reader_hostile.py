"""Well-formed but hostile shard content (issue 13): valid JSON of the wrong type, finite huge
vectors, sizes in headers and manifests that the data does not back. Each case is handled at the
boundary: a counted skip with a reason code (per event) or a named error, never an exception from
deep inside, never an allocation the bytes read do not justify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
from tar_helpers import add_member, npy_bytes

from data_modules import ReaderConfig, ReplayConfig, ShardSetWriter, StreamReplayDataset, write_manifest
from data_modules.shard_format import MANIFEST_NAME, load_manifest, scan_manifest
from data_modules.shard_reader import SKIP_CODES, mask_bad_rows
from data_modules.stream_replay import StreamReplayDataModule

RAW = ReaderConfig(decode_media=False)
D = 4


def _unit(rng, n):
    x = rng.standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _block(tar, bkey, meta, ts, emb):
    add_member(tar, f"{bkey}.events.json", meta if isinstance(meta, bytes) else json.dumps(meta).encode())
    add_member(tar, f"{bkey}.ts.npy", npy_bytes(ts))
    if emb is not None:
        add_member(tar, f"{bkey}.x.npy", npy_bytes(emb))


def _write_events(folder, n, per_shard, seed, prefix="e", ts0=0):
    """n unit-vector event samples e0..e{n-1} in shards of per_shard."""
    rng = np.random.default_rng(seed)
    with ShardSetWriter(folder, "f", per_shard) as w:
        for i in range(n):
            w.write_event(ts=ts0 + i, key=f"{prefix}{i}", emb={"x": _unit(rng, 1)[0]})


def _good_meta(prefix, n):
    return {"keys": [f"{prefix}{i}" for i in range(n)], "topics": [""] * n, "text": {}}


def _replay(folder, batch_size=4, **kw):
    ds = StreamReplayDataset(ReplayConfig(root=str(folder), batch_size=batch_size, reader=RAW, **kw))
    batches = list(ds)
    assert len(batches) == ds.batches_per_pass()
    keys = [k for b in batches for k in b["key"]]
    return ds, batches, keys


def _events_skipped(batches):
    return sum(b["events_skipped"] for b in batches)


HOSTILE_META = {
    "a list": [1, 2, 3],
    "a number": 7,
    "null": None,
    "a string": "keys",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "keys as an object": {"keys": {"a": 1}},
    "keys of lists": {"keys": [[1], [2], [3]]},
    "keys of bools": {"keys": [True, False, True]},
    "keys too short": {"keys": ["a"]},
    "topics a number": {"keys": ["a", "b", "c"], "topics": 5},
    "text a list": {"keys": ["a", "b", "c"], "text": ["txt"]},
    "text column of numbers": {"keys": ["a", "b", "c"], "text": {"txt": [1, 2, 3]}},
    "not utf-8": b"\xff\xfe{}",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_META))
def test_events_json_of_the_wrong_type_is_a_counted_skip(tmp_path, case):
    rng = np.random.default_rng(0)
    with tarfile.open(tmp_path / "h-000000.tar", "w") as tar:
        _block(tar, "bad", HOSTILE_META[case], np.arange(3, dtype=np.int64), _unit(rng, 3))
        _block(tar, "good", _good_meta("g", 3), np.arange(3, 6, dtype=np.int64), _unit(rng, 3))
    m = scan_manifest(sorted(tmp_path.glob("h-*.tar")), root=tmp_path)
    m.media = ["txt"]
    write_manifest(m, tmp_path)
    ds, batches, keys = _replay(tmp_path)
    assert keys == ["g0", "g1", "g2"]
    codes = {s.code for s in ds.skips}
    assert codes & {"bad_json", "corrupt_sample"}, ds.skips
    # per event: the bad block's 3 rows are counted (1 for the sample + 2 reconciled with the manifest)
    assert len(keys) + _events_skipped(batches) == 6


def test_hostile_manifest_scan_never_raises(tmp_path):
    for i, case in enumerate(sorted(HOSTILE_META)):
        with tarfile.open(tmp_path / f"h-{i:06d}.tar", "w") as tar:
            _block(tar, "bad", HOSTILE_META[case], np.arange(3, dtype=np.int64), None)
    m = scan_manifest(sorted(tmp_path.glob("h-*.tar")), root=tmp_path)
    assert len(m.shards) == len(HOSTILE_META) and m.total_events == 3 * len(HOSTILE_META)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300, 2.5])
def test_float_ts_that_is_not_a_whole_int64_is_refused(tmp_path, bad):
    rng = np.random.default_rng(1)
    with tarfile.open(tmp_path / "t-000000.tar", "w") as tar:
        _block(tar, "bad", _good_meta("b", 3), np.array([1.0, bad, 3.0]), _unit(rng, 3))
        _block(tar, "ok", _good_meta("o", 2), np.array([4.0, 5.0]), _unit(rng, 2))  # whole floats are fine
    write_manifest(scan_manifest(sorted(tmp_path.glob("t-*.tar")), root=tmp_path), tmp_path)
    ds, batches, keys = _replay(tmp_path)
    assert keys == ["o0", "o1"] and [s.code for s in ds.skips][0] == "bad_ts"
    assert int(np.iinfo(np.int64).min) not in [t for b in batches for t in b["ts"].tolist()]
    assert len(keys) + _events_skipped(batches) == 5


def test_event_ts_outside_int64_is_refused(tmp_path):
    with tarfile.open(tmp_path / "t-000000.tar", "w") as tar:
        add_member(tar, "a.ts", str(1 << 70).encode())
        add_member(tar, "b.ts", b"5")
    write_manifest(scan_manifest(sorted(tmp_path.glob("t-*.tar")), root=tmp_path), tmp_path)
    ds, batches, keys = _replay(tmp_path)
    assert keys == ["b"] and ds.skips[0].code == "bad_ts"


@pytest.mark.parametrize("row", ["huge", "denormal", "zero", "nan"])
def test_out_of_range_embedding_rows_are_masked_and_counted(row):
    from data_modules.shard_reader import EventChunk

    x = np.full((3, D), 0.5, np.float32)
    x[1] = {"huge": 3e38 / 2, "denormal": 1e-40, "zero": 0.0, "nan": np.nan}[row]
    chunk = EventChunk(["a", "b", "c"], np.arange(3), [""] * 3, {"x": x}, {"x": np.ones(3, bool)})
    masked, first = mask_bad_rows(chunk, 1e-6, 1e4)
    assert (masked, first) == (1, "b")
    assert chunk.has["x"].tolist() == [True, False, True] and not chunk.emb["x"][1].any()


def test_huge_finite_row_never_reaches_the_procrustes_statistic(tmp_path):
    """The issue's reproduction: one pair of norm 3e38 moved W by 1.38 in spectral norm. Masked at
    the reader, the bridge fitted on the replay equals the one fitted without that event."""
    from luma_pl.bridge.procrustes import ProcrustesConfig, StreamingProcrustes

    rng = np.random.default_rng(2)
    n = 64
    a, b = _unit(rng, n), _unit(rng, n)
    with ShardSetWriter(tmp_path, "p", 1000) as w:
        for i in range(n):
            va, vb = a[i], b[i]
            if i == 10:
                va = np.full(D, 1.5e38, np.float32)
            w.write_event(ts=i, key=f"e{i}", emb={"s": va, "c": vb})
    ds, batches, keys = _replay(tmp_path, batch_size=n)
    (batch,) = batches
    assert batch["has"]["s"].sum() == n - 1 and batch["skip_reasons"] == {"bad_embedding": 1}
    assert batch["events_skipped"] == 0  # the event is replayed, without that embedding
    keep = batch["has"]["s"] & batch["has"]["c"]
    cfg = ProcrustesConfig(d_s=D, d_c=D, refresh_every=1)
    fitted, clean = StreamingProcrustes(cfg), StreamingProcrustes(cfg)
    fitted.fit_step(batch["emb"]["s"][keep], batch["emb"]["c"][keep])
    mask = np.arange(n) != 10
    clean.fit_step(torch_from(a[mask]), torch_from(b[mask]))
    assert float((fitted.W - clean.W).abs().max()) < 1e-5


def torch_from(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


def test_manifest_listing_fewer_events_counts_the_surplus_per_event(tmp_path):
    _write_events(tmp_path, 20, 100, seed=3)
    m = load_manifest(tmp_path)
    m.shards[0].events = 9  # lists 9 of the 20
    write_manifest(m, tmp_path)
    ds, batches, keys = _replay(tmp_path, batch_size=4)
    assert len(keys) == 12  # ceil(9 / 4) = 3 planned batches are full
    (extra,) = [s for s in ds.skips if s.code == "extra_events"]
    assert extra.events == 8 and len(keys) + _events_skipped(batches) == 20


def test_manifest_listing_more_events_counts_the_shortfall(tmp_path):
    _write_events(tmp_path, 10, 100, seed=4)
    m = load_manifest(tmp_path)
    m.shards[0].events = 17
    write_manifest(m, tmp_path)
    ds, batches, keys = _replay(tmp_path, batch_size=4)
    assert len(keys) == 10 and [(s.code, s.events) for s in ds.skips] == [("missing_events", 7)]
    assert len(keys) + _events_skipped(batches) == 17


def test_shard_replaced_after_planning_is_reported_and_reconciled(tmp_path):
    _write_events(tmp_path, 16, 8, seed=5)
    ds = StreamReplayDataset(ReplayConfig(root=str(tmp_path), batch_size=4, reader=RAW))  # planned
    other = tmp_path / "other"
    _write_events(other, 3, 100, seed=55, prefix="r", ts0=100)  # a different shard of another size
    (other / "f-000000.tar").replace(tmp_path / "f-000001.tar")
    batches = list(ds)
    keys = [k for b in batches for k in b["key"]]
    assert keys == [f"e{i}" for i in range(8)] + ["r0", "r1", "r2"]
    assert [(s.code, s.events) for s in ds.skips] == [("stale_shard", 0), ("missing_events", 5)]
    assert len(keys) + _events_skipped(batches) == 16


def test_drop_last_tail_is_counted(tmp_path):
    _write_events(tmp_path, 10, 100, seed=6)
    ds, batches, keys = _replay(tmp_path, batch_size=4, drop_last=True)
    assert len(keys) == 8 and [(s.code, s.events) for s in ds.skips] == [("drop_last", 2)]


@pytest.mark.parametrize("name", ["../outside-000000.tar", "/etc/passwd", "a/../../x.tar", "c:/x.tar"])
def test_manifest_paths_are_confined_to_the_root(tmp_path, name):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"version": 1, "shards": [{"name": name, "events": 1}]}))
    with pytest.raises(ValueError, match="relative path inside"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("obj, field", [
    ([1, 2], "JSON list"), ({"version": "1", "shards": []}, "version"), ({"version": True, "shards": []}, "version"),
    ({"version": 1, "shards": {"a": 1}}, "shards"), ({"version": 1, "shards": [5]}, r"shards\[0\]"),
    ({"version": 1, "shards": [{"name": "a.tar", "events": "9"}]}, "events"),
    ({"version": 1, "shards": [{"name": "a.tar", "events": -1}]}, "events"),
    ({"version": 1, "shards": [{"name": "a.tar", "events": 1, "evil": 1}]}, "fields"),
    ({"version": 1, "shards": [], "spaces": {"x": 1 << 40}}, "spaces"),
    ({"version": 1, "shards": [], "spaces": {"x": 4.5}}, "spaces"),
    ({"version": 1, "shards": [], "spaces": {"../x": 4}}, "space name"),
    ({"version": 1, "shards": [], "media": ["pkl"]}, "media"),
    ({"version": 1, "shards": [], "extra": 1}, "unknown field"),
])
def test_manifest_of_the_wrong_type_is_a_named_error(tmp_path, obj, field):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=field):
        load_manifest(tmp_path)


def test_manifest_not_json_is_a_named_error(tmp_path):
    (tmp_path / MANIFEST_NAME).write_bytes(b"[" * 100_000)
    with pytest.raises(ValueError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_manifest_claiming_more_events_than_bytes_is_refused(tmp_path):
    rng = np.random.default_rng(7)
    with ShardSetWriter(tmp_path, "f", 100) as w:
        w.write_event(ts=1, key="a", emb={"x": _unit(rng, 1)[0]})
    m = load_manifest(tmp_path)
    m.shards[0].events = 900_000_000_000
    write_manifest(m, tmp_path)
    with pytest.raises(ValueError, match="lists 900000000000 events"):
        load_manifest(tmp_path)


_BOMB = textwrap.dedent("""
    import io, resource, sys, tarfile
    import numpy as np
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # torch import reserves ~4 GiB of address space
    sys.path.insert(0, sys.argv[2])
    from data_modules import ReaderConfig, ReplayConfig, StreamReplayDataset, write_manifest
    from data_modules.shard_format import scan_manifest
    from pathlib import Path
    root = Path(sys.argv[1])
    # a ts.npy whose header claims 9e11 rows but holds 3; and an x.npy claiming (3, 2**40)
    def forged(shape, payload):
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": shape})
        return buf.getvalue() + payload
    with tarfile.open(root / "b-000000.tar", "w") as tar:
        for name, data in (("big.events.json", b'{"keys": ["a", "b", "c"]}'),
                           ("big.ts.npy", forged((900_000_000_000,), np.arange(3).tobytes())),
                           ("wide.events.json", b'{"keys": ["a", "b", "c"]}'),
                           ("wide.ts.npy", forged((3,), np.arange(3).tobytes())),
                           ("wide.x.npy", forged((3, 1 << 40), b"")),
                           ("ok.ts", b"1")):
            info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
    m = scan_manifest([root / "b-000000.tar"], root=root)
    assert m.total_events < 10 and "x" not in m.spaces, m
    m.spaces = {"x": 4}
    write_manifest(m, root)
    ds = StreamReplayDataset(ReplayConfig(root=str(root), batch_size=4, reader=ReaderConfig(decode_media=False)))
    batches = list(ds)
    keys = [k for b in batches for k in b["key"]]
    assert keys == ["ok"], keys
    print("codes", sorted(s.code for s in ds.skips))
    print("maxrss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
""")


def test_sizes_in_npy_headers_are_not_trusted_for_allocation(tmp_path):
    """The issue's reproduction (a 9e11-row ts.npy header planned 14e9 batches and was OOM-killed at
    22 GB), under a 6 GiB address-space limit (torch alone reserves ~4) so a regression fails instead of the machine."""
    import pathlib

    repo = str(pathlib.Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _BOMB, str(tmp_path), repo], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "corrupt_sample" in out.stdout


def test_datamodule_logs_skips_per_reason(tmp_path):
    rng = np.random.default_rng(8)
    with ShardSetWriter(tmp_path, "f", 100) as w:
        for i in range(6):
            w.write_event(ts=i, key=f"e{i}", emb={"x": _unit(rng, 1)[0] * (1e30 if i == 2 else 1)})
    with tarfile.open(tmp_path / "f-000000.tar", "a"):
        pass
    dm = StreamReplayDataModule(root=str(tmp_path), batch_size=4, reader={"decode_media": False})
    dm.setup("fit")
    for b in dm.train_dataloader():
        dm.mark_consumed(b)
    metrics = dm.metrics()
    assert set(f"replay/skipped/{c}" for c in SKIP_CODES) <= set(metrics)
    assert metrics["replay/skipped/bad_embedding"] == 1 and metrics["replay/events_skipped"] == 0
    assert metrics["replay/events_seen"] == 6
