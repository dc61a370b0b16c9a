"""Background retraining of the warm IVFPQ (``MemoryConfig.retrain_in_background``): the index the
worker process trains equals an in-process training on the same sample, it is installed at a fixed
insert, every warm item is re-encoded with it, and a memory saved while a job runs resumes it to the
same end state as an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest

from luma_pl.memory import MemoryConfig, TieredMemory, load, save
from luma_pl.memory.policy import WARM

D = 16


def cfg(**kw) -> MemoryConfig:
    base = dict(dim=D, hot_max_items=0, hot_max_bytes=1 << 20, warm_max_items=5000, warm_max_bytes=1 << 24,
                nlist=2, pq_m=4, pq_nbits=4, train_points_per_centroid=20, zeta_window=64,
                retrain_drift_factor=1.2, retrain_in_background=True, retrain_lag_inserts=3)
    return MemoryConfig(**{**base, **kw})


def drifting(n: int = 1600, seed: int = 0) -> np.ndarray:
    """Two regimes: the first 400 rows train the codebook, the rest lie elsewhere (zeta drifts)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((400, D)) * np.r_[np.ones(4) * 3, np.ones(D - 4) * 0.2]
    b = rng.standard_normal((n - 400, D)) * np.r_[np.ones(D - 4) * 0.2, np.ones(4) * 3]
    x = np.concatenate([a, b]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stream(mem: TieredMemory, x: np.ndarray, start: int = 0, stop: int | None = None, batch: int = 32) -> None:
    stop = len(x) if stop is None else stop
    for s in range(start, stop, batch):
        mem.insert(np.arange(s, min(stop, s + batch)), x[s:min(stop, s + batch)])


def state(mem: TieredMemory) -> dict:
    n = mem.num_keys
    return {"locations": mem.locations[:n].copy(), "zeta": mem.zeta[:n].copy(), "ids": mem.ids[:n].copy(),
            "warm_index": mem.warm.index_bytes().copy(), "retrains": mem.counters["retrains"],
            "trainings": mem.warm.trainings}


@pytest.mark.slow
def test_background_retrain_installs_the_same_index_at_a_fixed_insert(tmp_path):
    x = drifting()
    mem = TieredMemory(cfg())
    started_at = None
    for s in range(0, len(x), 32):
        mem.insert(np.arange(s, s + 32), x[s:s + 32])
        if started_at is None and mem.retrain_at >= 0:
            started_at, at, keys = mem.counters["insert_calls"], mem.retrain_at, mem.retrain_keys.copy()
            sample = mem.originals.get(keys)
            assert at == started_at + 3 and len(keys) == mem.warm.train_size
            assert mem.counters["retrains"] == 0
        if started_at is not None and mem.counters["retrains"] == 1:
            break
    assert started_at is not None, "the drifting stream never triggered a retraining"
    assert mem.counters["insert_calls"] == at  # installed exactly at the planned insert
    # the worker's index is the one an in-process training on the same sample gives
    ref = mem.warm.new_index()
    ref.train(sample)
    import faiss

    np.testing.assert_array_equal(faiss.vector_to_array(mem.warm.index.pq.centroids),
                                  faiss.vector_to_array(ref.pq.centroids))
    # every warm item was re-encoded with it: zeta is its reconstruction error under the new codes
    keys = mem.keys_in(WARM)
    xs = mem.originals.get(keys)
    rec = mem.warm.index.sa_decode(mem.warm.index.sa_encode(xs))
    np.testing.assert_allclose(mem.zeta[keys], np.linalg.norm(xs - rec, axis=1), rtol=1e-5, atol=1e-6)
    assert mem.audit()["warm"] == len(keys) and mem.counters["retrain_wait_ms"] >= 0
    mem.close()


@pytest.mark.slow
def test_saved_while_training_resumes_to_the_uninterrupted_end_state(tmp_path):
    x = drifting()
    full = TieredMemory(cfg())
    stream(full, x)
    assert full.counters["retrains"] >= 1
    want = state(full)
    full.close()

    part = TieredMemory(cfg())
    s = 0
    while part.retrain_at < 0:  # run until a job is in flight, then save in the middle of it
        stream(part, x, s, s + 32)
        s += 32
    save(part, str(tmp_path / "snap"))
    part.close()
    resumed = load(str(tmp_path / "snap"))
    assert resumed.retrain_at >= 0 and len(resumed.retrain_keys) > 0  # the job came back
    stream(resumed, x, s)
    got = state(resumed)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    resumed.close()


def test_inline_retrain_is_the_default_and_lag_is_validated():
    assert MemoryConfig(dim=8).retrain_in_background is False
    from luma_pl.configuration import ConfigError

    with pytest.raises(ConfigError, match="retrain_lag_inserts"):
        MemoryConfig(dim=8, pq_m=4, retrain_lag_inserts=-1).validate()


@pytest.mark.slow
def test_a_script_without_a_main_guard_can_retrain_in_the_background(tmp_path):
    # multiprocessing's spawn would re-run such a script in the child; the trainer starts
    # `python -m luma_pl.memory.retrain` instead
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "user_script.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_memory_retrain import cfg, drifting, stream\n"
        "from luma_pl.memory import TieredMemory\n"
        "mem = TieredMemory(cfg())\n"
        "stream(mem, drifting())\n"
        "print('retrains', mem.counters['retrains'])\n"
        "mem.close()\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("retrains") == 1 and int(run.stdout.split()[-1]) >= 1


@pytest.mark.slow
def test_an_exit_with_a_job_in_flight_leaves_no_child_and_no_files(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "exits_early.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_memory_retrain import cfg, drifting, stream\n"
        "from luma_pl.memory import TieredMemory\n"
        "mem = TieredMemory(cfg(retrain_lag_inserts=10000))\n"
        "stream(mem, drifting())\n"
        "print(mem._trainer._proc.pid)\n")  # no close(): the interpreter exits with the job running
    jobs = tmp_path / "tmp"
    jobs.mkdir()
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, TMPDIR=str(jobs)))
    assert run.returncode == 0, run.stderr[-2000:]
    pid = int(run.stdout.split()[-1])
    assert not [p for p in jobs.iterdir() if p.name.startswith("luma_retrain_")]
    try:
        os.kill(pid, 0)
        alive = Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0  # a zombie is gone
    except ProcessLookupError:
        alive = False
    assert not alive
