"""Training the warm tier's IVFPQ, here or in a background process.

At d=512 with 64 x 8-bit PQ, one training on ~10k points takes ~6.8 s on one thread, and a drifting
stream retrains every few thousand warm items (``MemoryConfig.retrain_drift_factor``): done in line,
that stalls ingest for seconds each time. ``BackgroundTrainer`` runs it in a child process instead
(``python -m luma_pl.memory.retrain <job folder>``). Not a thread: faiss's k-means takes the GIL back
often enough that a training beside a busy Python thread ran 14.6 s instead of 6.8 s here, while in a
process it ran 6.9 s with the parent at full speed. Not ``multiprocessing``: its spawn start method
re-imports the parent's ``__main__`` in the child, which re-runs any user script without a main
guard. The job goes through files: the sample as ``.npy`` (read with ``allow_pickle=False``), the
parameters as JSON, the trained index back with ``faiss.write_index`` (no pickle anywhere).

The memory keeps its determinism: the training sample is chosen when the job starts (seeded), the
new index is installed at a fixed later insert (``retrain_lag_inserts``, waiting for the child if it
is not done), and a memory saved while a job runs saves the job (the sample's keys and the install
point), which ``load`` starts again. faiss k-means with a fixed seed on one thread gives the same
index in any process, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import weakref

import faiss
import numpy as np


def new_ivfpq(dim: int, nlist: int, pq_m: int, pq_nbits: int, niter: int, seed: int) -> faiss.IndexIVFPQ:
    """An untrained inner-product IVFPQ with seeded k-means (coarse and PQ) and ``niter`` PQ iterations."""
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, pq_nbits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.pq.cp.seed = seed
    index.pq.cp.niter = niter
    quantizer.this.disown()  # owned by the IVF index
    index.own_fields = True
    return index


class BackgroundTrainer:
    """One training at a time in a child process; the job's files live in a private temp folder."""

    def __init__(self, threads: int = 1):
        self.threads = int(threads)
        self._job: dict = {"proc": None, "dir": None}
        # a memory dropped without close(), or an interpreter exit, must not leave a child running
        # or its job folder behind
        self._finalizer = weakref.finalize(self, _reap, self._job)

    @property
    def _proc(self) -> subprocess.Popen | None:
        return self._job["proc"]

    @_proc.setter
    def _proc(self, value) -> None:
        self._job["proc"] = value

    @property
    def _dir(self) -> str | None:
        return self._job["dir"]

    @_dir.setter
    def _dir(self, value) -> None:
        self._job["dir"] = value

    @property
    def pending(self) -> bool:
        return self._proc is not None

    @property
    def done(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None

    def submit(self, sample: np.ndarray, **params) -> None:
        if self._proc is not None:
            raise RuntimeError("a training is already running; take its result() first")
        self._dir = tempfile.mkdtemp(prefix="luma_retrain_")
        np.save(os.path.join(self._dir, "sample.npy"), np.ascontiguousarray(sample, dtype=np.float32))
        with open(os.path.join(self._dir, "params.json"), "w") as f:
            json.dump({**params, "threads": self.threads}, f)
        # the child imports this package from where the parent did (an installed or a source checkout)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), PYTHONPATH=path)
        self._proc = subprocess.Popen([sys.executable, "-m", "luma_pl.memory.retrain", self._dir], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def result(self) -> faiss.IndexIVFPQ:
        """The trained index (blocks until the child is done); the trainer is free again after."""
        if self._proc is None:
            raise RuntimeError("no training was submitted")
        proc, folder = self._proc, self._dir
        self._proc = None
        try:
            _, err = proc.communicate()
            path = os.path.join(folder, "index.faiss")
            if proc.returncode != 0 or not os.path.exists(path):
                tail = err.decode(errors="replace")[-2000:] if err else ""
                raise RuntimeError(f"background warm-tier training failed (exit {proc.returncode}): {tail}; "
                                   "set MemoryConfig.retrain_in_background=false to train in line")
            return faiss.read_index(path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            self._dir = None

    def cancel(self) -> None:
        """Stop a running job (its result is discarded)."""
        _reap(self._job)

    def close(self) -> None:
        self.cancel()


def _reap(job: dict) -> None:
    proc, folder = job["proc"], job["dir"]
    job["proc"] = job["dir"] = None
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _main(folder: str) -> None:
    """Child side: train on the job's sample and write the index next to it (atomically)."""
    with open(os.path.join(folder, "params.json")) as f:
        params = json.load(f)
    faiss.omp_set_num_threads(int(params.pop("threads", 1)))
    sample = np.load(os.path.join(folder, "sample.npy"), allow_pickle=False)
    index = new_ivfpq(**params)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    tmp = os.path.join(folder, "index.faiss.tmp")
    faiss.write_index(index, tmp)
    os.replace(tmp, os.path.join(folder, "index.faiss"))


if __name__ == "__main__":
    _main(sys.argv[1])
