"""Hostile inputs and environments for the memory: a k far above the item count under a memory
limit, a full disk during an upsert, a read-only snapshot."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from luma_pl.memory import MemoryConfig, TieredMemory, load, save

ROOT = Path(__file__).resolve().parents[3]
D = 16
CFG = dict(dim=D, hot_max_items=60, hot_max_bytes=1 << 20, warm_max_items=2000, warm_max_bytes=1 << 22,
           nlist=4, nprobe=4, pq_m=4, pq_nbits=4, train_points_per_centroid=20, hnsw_m=8)


def _unit(n, d=D, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


KBOMB = textwrap.dedent('''
    import resource, sys, warnings
    sys.path.insert(0, {root!r})
    import faiss
    import numpy as np
    from luma_pl.memory import MemoryConfig, TieredMemory
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    d, n = 64, 1000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((16, d)).astype(np.float32)
    m = TieredMemory(MemoryConfig(dim=d, hot_backend="flat", hot_max_items=200, hot_max_bytes=1 << 24,
                                  warm_max_items=5000, warm_max_bytes=1 << 26, nlist=4, nprobe=4, pq_m=8,
                                  pq_nbits=4, train_points_per_centroid=20))
    m.insert(np.arange(n), x)
    assert len(m) == n and m.warm.ivf_count > 0, (len(m), m.warm.ivf_count)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        big = m.search(q, 100000, record_hits=False)
        m.search(q, 100000, record_hits=False)
    assert sum("k=100000" in str(v.message) for v in w) == 1, [str(v.message) for v in w]
    ref = m.search(q, n, record_hits=False)
    assert big.ids.shape == big.scores.shape == big.tiers.shape == big.zeta.shape == (16, 100000)
    for a, b in ((big.ids, ref.ids), (big.scores, ref.scores), (big.tiers, ref.tiers), (big.zeta, ref.zeta)):
        np.testing.assert_array_equal(a[:, :n], b)
    assert (big.ids[:, n:] == -1).all() and np.isneginf(big.scores[:, n:]).all()
    assert (big.tiers[:, n:] == -1).all() and (big.zeta[:, n:] == 0).all()
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    es, ei = exact.search(q, n)
    for r in range(len(q)):  # every item once, each with its exact score, in descending order
        assert sorted(big.ids[r, :n].tolist()) == list(range(n))
        true = (x @ q[r])[big.ids[r, :n]]
        np.testing.assert_allclose(big.scores[r, :n], true, atol=1e-5)
        np.testing.assert_allclose(big.scores[r, :n], es[r], atol=1e-5)
    np.testing.assert_array_equal(big.ids[:, :5], ei[:, :5])
    print("OK")
''')


def test_k_bomb_under_memory_limit_is_clamped_and_padded():
    env = dict(os.environ, LUMA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", KBOMB.format(root=str(ROOT))], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr[-3000:]


def test_k_above_count_on_empty_and_small_memory_pads_and_warns_once():
    m = TieredMemory(MemoryConfig(**CFG))
    q = _unit(3, seed=1)
    with pytest.warns(UserWarning, match=r"k=50 exceeds the 0 live items"):
        r = m.search(q, 50)
    assert r.ids.shape == (3, 50) and (r.ids == -1).all() and np.isneginf(r.scores).all()
    assert (r.tiers == -1).all() and (r.zeta == 0).all()
    x = _unit(10)
    m.insert(np.arange(10), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once already: no second warning for this memory
        r = m.search(q, 50)
        m.search(q, 10)
    assert r.ids.shape == (3, 50) and (r.ids[:, :10] >= 0).all() and (r.ids[:, 10:] == -1).all()
    np.testing.assert_array_equal(r.ids[:, :10], m.search(q, 10).ids)
    m.close()


def _upsert_victim():
    m = TieredMemory(MemoryConfig(**CFG))
    x = _unit(100)
    m.insert(np.arange(100), x)
    return m, x


def _same_after_failed_upsert(m, x, before):
    assert len(m) == 100 and m.audit() == before[0] and m.num_keys == before[1]
    assert m.location(7) == before[2]
    r = m.search(x[7:8], 1, record_hits=False)
    assert int(r.ids[0, 0]) == 7 and r.scores[0, 0] > 0.999


@pytest.mark.parametrize("where", ["append", "write", "commit"])
def test_upsert_on_full_disk_loses_nothing(monkeypatch, where):
    from luma_pl.memory import originals

    m, x = _upsert_victim()
    before = m.audit(), m.num_keys, m.location(7)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    store = m.originals
    if where == "append":
        monkeypatch.setattr(store, "append", full)
    elif where == "write":
        class FullFile:
            def __init__(self, f):
                self.f = f
            def write(self, b):
                self.f.write(b[: len(b) // 2])  # a torn write, then ENOSPC
                full()
            def __getattr__(self, name):
                return getattr(self.f, name)
        monkeypatch.setattr(store, "_file", FullFile(store._file))
    else:
        store.sync_rows = 1
        monkeypatch.setattr(originals, "write_json_atomic", full)
    with pytest.raises(OSError, match="No space left"):
        m.insert(np.array([7]), _unit(1, seed=5), upsert=True)
    _same_after_failed_upsert(m, x, before)
    monkeypatch.undo()
    m.insert(np.array([7]), _unit(1, seed=5), upsert=True)  # space is back: the upsert works
    assert len(m) == 100 and m.counters["replaced"] == 1
    m.audit()
    m.close()


def _snapshot_bytes(snap: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(snap.iterdir())}


def test_load_from_read_only_snapshot_writes_nothing(tmp_path):
    m, x = _upsert_victim()
    snap = tmp_path / "snap"
    save(m, str(snap))
    before = _snapshot_bytes(snap)
    subprocess.run(["chmod", "-R", "a-w", str(snap)], check=True)
    try:
        back = load(str(snap))
        r = back.search(x[:5], 1, record_hits=False)
        assert r.ids[:, 0].tolist() == [0, 1, 2, 3, 4]
        back.insert(np.array([1000]), _unit(1, seed=9))  # the loaded copy is writable
        back.audit()
        back.close()
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(snap)], check=True)
    assert _snapshot_bytes(snap) == before
    m.close()


def test_load_never_opens_snapshot_for_writing(tmp_path, monkeypatch):
    """As root, chmod does not stop writes: a read-only filesystem is simulated instead (EROFS on
    any open of a snapshot file for writing)."""
    import builtins

    m, x = _upsert_victim()
    snap = tmp_path / "snap"
    save(m, str(snap))
    before = _snapshot_bytes(snap)
    real_open, real_os_open = builtins.open, os.open

    def inside(p):
        return os.path.abspath(os.fspath(p)).startswith(str(snap) + os.sep)

    def ro_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and inside(file) and any(c in mode for c in "wa+x"):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(file))
        return real_open(file, mode, *a, **k)

    def ro_os_open(file, flags, *a, **k):
        if inside(file) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(file))
        return real_os_open(file, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", ro_open)
    monkeypatch.setattr(os, "open", ro_os_open)
    back = load(str(snap))
    monkeypatch.undo()
    assert back.search(x[:3], 1, record_hits=False).ids[:, 0].tolist() == [0, 1, 2]
    back.audit()
    back.close()
    assert _snapshot_bytes(snap) == before
    m.close()


HOLDER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {root!r})
    from luma_pl.memory import persistence
    with persistence._locked({snap!r}, exclusive=True):
        print("HELD", flush=True)
        sys.stdin.read()  # until the test closes our stdin
''')


def test_save_while_another_process_holds_the_lock_raises_clear_error(tmp_path):
    from luma_pl.memory.persistence import SnapshotBusyError

    m, x = _upsert_victim()
    snap = str(tmp_path / "snap")
    save(m, snap)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT), snap=snap)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(SnapshotBusyError, match=rf"pid {holder.pid} .*lock_timeout="):
            save(m, snap, lock_timeout=0.3)
        with pytest.raises(SnapshotBusyError, match="lock_timeout="):
            load(snap, lock_timeout=0.3)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    m.insert(np.array([500]), _unit(1, seed=3))
    save(m, snap, lock_timeout=0.3)  # the holder is gone: the lock is free
    back = load(snap)
    assert len(back) == 101
    back.audit()
    back.close()
    m.close()
    assert sorted(os.listdir(tmp_path)) == ["snap"]


WORKER = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    import numpy as np
    from luma_pl.memory import MemoryConfig, TieredMemory, load, save
    sys.path[:0] = [{here!r}, {tests!r}]  # this file's folder, and tests/ for the shared helpers
    import test_memory_hostile as T
    snap, role, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if role == "save":
        m = TieredMemory(MemoryConfig(**T.CFG))
        x = T._unit(40 * rounds, seed=int(sys.argv[4]))
        base = int(sys.argv[4]) * 100000
        for i in range(rounds):
            m.insert(np.arange(base + 40 * i, base + 40 * (i + 1)), x[40 * i: 40 * (i + 1)])
            save(m, snap, lock_timeout=60)
    else:
        for i in range(rounds):
            try:
                b = load(snap, lock_timeout=60)
            except FileNotFoundError:
                continue  # the first save has not finished yet
            b.audit()
            b.close()
    print("DONE", flush=True)
''')


@pytest.mark.parametrize("roles", [("save", "load"), ("save", "save")])
def test_concurrent_save_and_load_or_two_saves_end_loadable(tmp_path, roles):
    snap = str(tmp_path / "snap")
    env = dict(os.environ, LUMA_NUM_THREADS="1")
    code = WORKER.format(root=str(ROOT), here=str(Path(__file__).resolve().parent), tests=str(ROOT / "tests"))
    procs = [subprocess.Popen([sys.executable, "-c", code, snap, role, "25", str(i + 1)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, role in enumerate(roles)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "DONE" in out, err[-3000:]
    back = load(snap)
    back.audit()
    assert len(back) == 1000
    back.close()
    assert sorted(os.listdir(tmp_path)) == ["snap"]


def _sharded_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    from luma_pl.memory.sharded import ShardedMemory, shard_of
    from luma_pl.threads import limit_cpu_threads

    limit_cpu_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, q = _unit(300), _unit(6, seed=4)
        mem = ShardedMemory(TieredMemory(MemoryConfig(**CFG)))
        ids = np.arange(300)
        ids = ids[shard_of(ids, world) == 0][:50]  # rank 1's shard stays empty
        mem.insert(ids, x[ids])
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            big = mem.search(q if rank == 0 else q[:0], 100000)
            mem.search(q if rank == 0 else q[:0], 100000)
        ref = mem.search(q if rank == 0 else q[:0], 50)
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), ids=big.ids, scores=big.scores, tiers=big.tiers,
                 zeta=big.zeta, ref_ids=ref.ids, ref_scores=ref.scores, warned=len(w), all_ids=ids)
        mem.shard.close()
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_sharded_k_above_count_clamps_per_shard_and_pads(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert int(r0["warned"]) == int(r1["warned"]) == 1
    assert r0["ids"].shape == (6, 100000) and r1["ids"].shape == (0, 100000)
    np.testing.assert_array_equal(r0["ids"][:, :50], r0["ref_ids"])
    np.testing.assert_array_equal(r0["scores"][:, :50], r0["ref_scores"])
    assert sorted(r0["ids"][0, :50].tolist()) == sorted(r0["all_ids"].tolist())
    assert (r0["ids"][:, 50:] == -1).all() and np.isneginf(r0["scores"][:, 50:]).all()
    assert (r0["tiers"][:, 50:] == -1).all() and (r0["zeta"][:, 50:] == 0).all()
