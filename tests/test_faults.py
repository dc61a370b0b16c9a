"""Fault injection (issue 8): kill -9 during ingest, during a memory save (inside the write and
between its renames), during a checkpoint write; disk full during a save; a checkpoint carrying a
pickled object. After each: the state on disk equals the last consistent one, and an ingest that
resumes from it neither duplicates nor skips an event.

The kill -9 of ``train.py fit`` mid-run is tests/test_train_resume.py (bridge + memory + replay
position equal an uninterrupted run); not repeated here.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from luma_pl.memory import MemoryConfig, TieredMemory, load, save
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()
ROOT = Path(__file__).resolve().parents[1]
D, N, BATCH, SAVE_EVERY = 16, 1200, 100, 3
CFG = dict(dim=D, hot_max_items=60, hot_max_bytes=1 << 20, warm_max_items=2000, warm_max_bytes=1 << 22,
           nlist=4, nprobe=4, pq_m=4, pq_nbits=4, train_points_per_centroid=20, hnsw_m=8)


def events() -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# A child process: ingest events in batches from where the snapshot left off, save every SAVE_EVERY
# batches; ``KILL`` names where it SIGKILLs itself (no cleanup, no flush).
CHILD = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    sys.path[:0] = [{root!r}, {tests!r}]
    import test_faults as T
    from luma_pl.memory import MemoryConfig, TieredMemory, load, save, persistence, originals
    snap, kill = sys.argv[1], sys.argv[2]
    x = T.events()
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if os.path.exists(snap):
        m = load(snap)
        start = int(m.counters["inserted"])  # events 0..start-1 are in the snapshot
    else:
        m, start = TieredMemory(MemoryConfig(**T.CFG)), 0
    saves = 0
    if kill == "in_save":  # die halfway through writing arrays.npz of the 2nd save
        real = np.savez
        def savez(f, **kw):
            if saves == 1:
                f.write(b"PK partial"); f.flush(); die()
            real(f, **kw)
        persistence.np.savez = savez
    if kill == "between_renames":  # die after the old snapshot was renamed aside, before the new one moved in
        real_replace = os.replace
        def replace(a, b):
            if saves == 1 and ".old-" in str(b):
                real_replace(a, b); die()
            real_replace(a, b)
        persistence.os.replace = replace
    for b, i in enumerate(range(start, T.N, T.BATCH)):
        m.insert(np.arange(i, min(i + T.BATCH, T.N)), x[i:i + T.BATCH])
        if kill == "ingest" and i >= 700:
            die()  # mid-ingest: 2 batches inserted since the last save
        if (b + 1) % T.SAVE_EVERY == 0:
            save(m, snap)
            saves += 1
    save(m, snap)
    print("DONE", m.counters["inserted"])
''')


def _child(snap: Path, kill: str) -> subprocess.CompletedProcess:
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"))
    env = dict(os.environ, LUMA_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code, str(snap), kill], capture_output=True, text=True,
                          timeout=120, env=env)


def _reference() -> TieredMemory:
    m = TieredMemory(MemoryConfig(**CFG))
    x = events()
    for i in range(0, N, BATCH):
        m.insert(np.arange(i, min(i + BATCH, N)), x[i:i + BATCH])
    return m


def _same_memory(a: TieredMemory, b: TieredMemory) -> None:
    assert a.audit() == b.audit() and len(a) == len(b)
    assert sorted(a.key_of) == sorted(b.key_of) == list(range(N))  # every event once: none lost, none twice
    np.testing.assert_array_equal(a.originals.get(np.arange(a.num_keys)), b.originals.get(np.arange(b.num_keys)))
    q = events()[::50]
    np.testing.assert_array_equal(a.search(q, 5, record_hits=False).ids, b.search(q, 5, record_hits=False).ids)


@pytest.mark.slow
@pytest.mark.parametrize("kill, saved_events", [("ingest", 600), ("in_save", 300), ("between_renames", 600)])
def test_kill9_then_resume_equals_uninterrupted(tmp_path, kill, saved_events):
    snap = tmp_path / "snap"
    killed = _child(snap, kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    mid = load(str(snap))  # the last consistent state (after between_renames: recovered from the new tmp)
    assert mid.counters["inserted"] == saved_events and sorted(mid.key_of) == list(range(saved_events))
    mid.audit()
    mid.close()
    resumed = _child(snap, "none")
    assert resumed.returncode == 0 and f"DONE {N}" in resumed.stdout, resumed.stderr[-2000:]
    final, ref = load(str(snap)), _reference()
    _same_memory(final, ref)
    assert not list(tmp_path.glob("snap.tmp-*")) and not list(tmp_path.glob("snap.old-*"))
    final.close()
    ref.close()


@pytest.mark.parametrize("where", ["arrays", "originals", "meta"])
def test_disk_full_during_save_leaves_previous_save_intact(tmp_path, monkeypatch, where):
    from luma_pl.memory import originals, persistence

    m = TieredMemory(MemoryConfig(**CFG))
    x = events()
    m.insert(np.arange(500), x[:500])
    snap = str(tmp_path / "snap")
    save(m, snap)
    before = sorted(os.listdir(snap)), {n: (Path(snap) / n).read_bytes() for n in os.listdir(snap)}
    m.insert(np.arange(500, 700), x[500:700])

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "arrays":  # a partial npz, then ENOSPC
        def savez(f, **kw):
            f.write(b"PK\x03\x04partial")
            full()
        monkeypatch.setattr(persistence.np, "savez", savez)
    elif where == "originals":
        monkeypatch.setattr(originals.OriginalsStore, "copy_committed_to", full)
    else:
        monkeypatch.setattr(persistence, "write_json_atomic", full)
    with pytest.raises(OSError, match="No space left"):
        save(m, snap)
    monkeypatch.undo()
    after = sorted(os.listdir(snap)), {n: (Path(snap) / n).read_bytes() for n in os.listdir(snap)}
    assert after == before  # byte for byte
    assert sorted(os.listdir(tmp_path)) == ["snap"]  # the half-written tmp dir was removed
    old = load(snap)
    assert sorted(old.key_of) == list(range(500)) and len(m) == 700  # the live memory lost nothing either
    m.audit()
    save(m, snap)  # space is back: the next save works
    assert sorted(load(snap).key_of) == list(range(700))
    m.close()
    old.close()


def test_kill9_during_checkpoint_write_keeps_previous_last_ckpt(tmp_path):
    """StreamCheckpoint writes a tmp file then renames: a kill inside the write leaves last.ckpt as
    it was (a fake trainer writes half a checkpoint, then the process is killed)."""
    code = textwrap.dedent(f'''
        import os, signal, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from callbacks.stream_checkpoint import StreamCheckpoint
        class Strategy:
            def barrier(self, name): pass
        class FakeTrainer:
            is_global_zero = True
            strategy = Strategy()
            calls = 0
            def save_checkpoint(self, path, weights_only=False):
                FakeTrainer.calls += 1
                if FakeTrainer.calls == 1:
                    torch.save({{"step": torch.tensor(1)}}, path)
                else:
                    with open(path, "wb") as f:
                        f.write(b"PK half a zip"); f.flush(); os.fsync(f.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
        cb = StreamCheckpoint(dirpath={str(tmp_path)!r}, every_n_batches=1)
        cb.save(FakeTrainer())
        cb.save(FakeTrainer())
    ''')
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert int(last["step"]) == 1
    # the torn tmp file is left behind by the dead process; it is never last.ckpt
    stale = [p for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(stale) == 1 and stale[0].name.startswith(".last.ckpt.tmp")
    # the next fit's rank 0 removes it (its process is gone); a live writer's tmp file is kept
    from types import SimpleNamespace

    from callbacks.stream_checkpoint import StreamCheckpoint

    live = tmp_path / f".last.ckpt.tmp{os.getppid()}"
    live.write_bytes(b"in progress")
    cb = StreamCheckpoint(dirpath=str(tmp_path))
    cb.on_fit_start(SimpleNamespace(is_global_zero=True), None)
    assert cb.stale_removed == 1 and not stale[0].exists() and live.exists()
    assert (tmp_path / "last.ckpt").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Evil(tmp_path / "twin")))  # the payload is live
    assert (tmp_path / "twin").exists()
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"bridge.W": torch.zeros(4, 4)}, "extra": _Evil(marker)}, ckpt)
    return ckpt, marker


def test_evaluate_refuses_a_checkpoint_with_a_pickled_object(tmp_path):
    from luma_pl.evaluation.stream_eval import StreamEvaluator

    ckpt, marker = _evil_checkpoint(tmp_path)
    ev = StreamEvaluator(eval={"bridge_checkpoint": str(ckpt), "report_dir": None},
                         bridge={"d_s": 4, "d_c": 4}, memory={"dim": 4, "pq_m": 2})
    with pytest.raises(ValueError, match=r"bridge_checkpoint=.*evil.ckpt' holds objects other than tensors.*"
                                         r"weights_only=True.*GLOBAL"):
        ev.setup("test")
    assert not marker.exists()


@pytest.mark.slow
def test_train_ckpt_path_refuses_a_checkpoint_with_a_pickled_object(tmp_path):
    from test_train_resume import _fit, _shards

    ckpt, marker = _evil_checkpoint(tmp_path)
    _shards(tmp_path / "shards", n=128)
    (tmp_path / "run").mkdir()
    run = _fit(tmp_path / "shards", tmp_path / "run", ["--ckpt_path", str(ckpt)])
    assert run.returncode != 0
    assert "Weights only load failed" in run.stderr and "GLOBAL" in run.stderr, run.stderr[-3000:]
    assert not marker.exists()


def test_saved_memory_corruptions_are_named_never_silently_loaded(tmp_path):
    """Truncated npz, flipped bytes, a checksum table emptied, counts that disagree, a truncated
    originals file: each is a ValueError naming the snapshot and the file."""
    import json
    import shutil
    import zlib

    m = TieredMemory(MemoryConfig(**CFG))
    m.insert(np.arange(500), events()[:500])
    base = tmp_path / "base"
    save(m, str(base))
    m.close()

    def trunc(name, frac):
        def f(p):
            b = (p / name).read_bytes()
            (p / name).write_bytes(b[: int(len(b) * frac)])
        return f

    def flip(name, off):
        def f(p):
            b = bytearray((p / name).read_bytes())
            b[off if off >= 0 else len(b) + off] ^= 0xFF
            (p / name).write_bytes(bytes(b))
        return f

    def meta(edit):
        def f(p):
            j = json.loads((p / "meta.json").read_text())
            edit(j)
            (p / "meta.json").write_text(json.dumps(j))
        return f

    def shorter_ids(p):  # a wrong shape whose checksum was recomputed: caught by the count checks
        z = dict(np.load(p / "arrays.npz"))
        z["ids"] = z["ids"][:-1]
        np.savez(p / "arrays.npz", **z)
        meta(lambda j: j["crc32"].__setitem__("ids", zlib.crc32(z["ids"].tobytes())))(p)

    cases = {
        "truncated npz": (trunc("arrays.npz", 0.5), "arrays.npz is missing or corrupt"),
        "empty npz": (trunc("arrays.npz", 0), "arrays.npz is missing or corrupt"),
        "flipped npz byte": (flip("arrays.npz", 3000), "arrays.npz is missing or corrupt|fails its checksum"),
        "truncated meta": (trunc("meta.json", 0.5), "meta.json is missing or corrupt"),
        "flipped meta byte": (flip("meta.json", 10), "meta.json is missing or corrupt"),
        "checksums emptied": (meta(lambda j: j.__setitem__("crc32", {})), "both must be exactly"),
        "num_keys mismatch": (meta(lambda j: j.__setitem__("num_keys", 499)), "ids has 500 rows, expected 499"),
        "wrong shape, valid crc": (shorter_ids, "ids has 499 rows, expected 500"),
        "truncated originals": (trunc("originals.f32", 0.5), "originals store .* is truncated"),
        "flipped originals byte": (flip("originals.f32", 100), "checksum mismatch"),
        "dim edited": (meta(lambda j: j["config"].__setitem__("dim", 32)), "holds dim=16 vectors, not dim=32"),
    }
    for name, (corrupt, match) in cases.items():
        snap = tmp_path / "snap"
        shutil.rmtree(snap, ignore_errors=True)
        shutil.copytree(base, snap)
        corrupt(snap)
        with pytest.raises(ValueError, match=match) as err:
            load(str(snap))
        assert str(snap) in str(err.value), name
