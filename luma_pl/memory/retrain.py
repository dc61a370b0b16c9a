"""Training the warm tier's IVFPQ, here or in a background process.

At d=512 with 64 x 8-bit PQ, one training on ~10k points takes ~6.8 s on one thread, and a drifting
stream retrains every few thousand warm items (``MemoryConfig.retrain_drift_factor``): done in line,
that stalls ingest for seconds each time. A drift retraining therefore starts from the index in use
(``train_ivfpq``, ``MemoryConfig.retrain_mode``): by default 4 coarse k-means iterations from the
current centroids and 1 PQ iteration from the current codebooks, 0.9 s for the zeta of a full
training (measured numbers in ``MemoryConfig.retrain_mode``); the worker gets that index's centroids
and codebooks as ``base.faiss`` (``quantizers_of``, no codes). ``BackgroundTrainer`` runs it in a child process instead
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


def quantizers_of(index: faiss.IndexIVFPQ) -> faiss.IndexIVFPQ:
    """An empty trained copy of ``index``: its coarse centroids and PQ codebooks, no codes (what a
    cheap retraining starts from; small enough to hand to the worker through ``faiss.write_index``)."""
    out = new_ivfpq(index.d, index.nlist, index.pq.M, index.pq.nbits, index.pq.cp.niter, index.cp.seed)
    out.quantizer.add(index.quantizer.reconstruct_n(0, index.nlist))
    faiss.copy_array_to_vector(faiss.vector_to_array(index.pq.centroids), out.pq.centroids)
    out.is_trained = True
    out.precompute_table()
    return out


def train_ivfpq(sample: np.ndarray, dim: int, nlist: int, pq_m: int, pq_nbits: int, niter: int, seed: int,
                mode: str = "full", coarse_iterations: int = 4, pq_iterations: int = 1,
                base: faiss.IndexIVFPQ | None = None) -> faiss.IndexIVFPQ:
    """A trained IVFPQ from the (n, d) ``sample`` (seeded, deterministic on one thread).

    ``mode`` (``MemoryConfig.retrain_mode``): 'full' trains coarse k-means and PQ from scratch (PQ
    with ``niter`` iterations); the cheap modes start from ``base`` (the index in use): 'coarse' runs
    ``coarse_iterations`` of coarse k-means from its centroids and keeps its PQ codebooks (by_residual:
    the codebooks describe residuals to the nearest centroid, which move less under topic drift than
    the vectors do); 'hot_start' does the same coarse step, then ``pq_iterations`` PQ k-means
    iterations on the new residuals from its codebooks (``ProductQuantizer.Train_hot_start``).
    Without ``base`` every mode trains in full.
    """
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if mode == "full" or base is None:
        index = new_ivfpq(dim, nlist, pq_m, pq_nbits, niter, seed)
        index.train(x)
        return index
    if mode not in ("coarse", "hot_start"):
        raise ValueError(f"retrain mode {mode!r} is unknown; use 'full', 'coarse' or 'hot_start'")
    index = new_ivfpq(dim, nlist, pq_m, pq_nbits, pq_iterations, seed)
    clus = faiss.Clustering(dim, nlist, index.cp)  # spherical (inner product), seeded, as a full training
    clus.niter = coarse_iterations
    faiss.copy_array_to_vector(base.quantizer.reconstruct_n(0, nlist).ravel(), clus.centroids)  # the init
    clus.train(x, faiss.IndexFlatIP(dim))
    index.quantizer.add(faiss.vector_to_array(clus.centroids).reshape(nlist, dim))
    faiss.copy_array_to_vector(faiss.vector_to_array(base.pq.centroids), index.pq.centroids)
    if mode == "coarse":
        index.is_trained = True
        index.precompute_table()
    else:
        # the quantizer holds nlist centroids, so IndexIVF.train skips it and trains only the PQ on
        # the residuals, starting from the current codebooks
        index.pq.train_type = faiss.ProductQuantizer.Train_hot_start
        index.train(x)
        index.pq.train_type = faiss.ProductQuantizer.Train_default
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

    def submit(self, sample: np.ndarray, base: faiss.IndexIVFPQ | None = None, **params) -> None:
        """Start ``train_ivfpq(sample, base=base, **params)`` in the child; ``base`` (the index a cheap
        mode starts from) goes as its ``quantizers_of`` copy through ``faiss.write_index``."""
        if self._proc is not None:
            raise RuntimeError("a training is already running; take its result() first")
        self._dir = tempfile.mkdtemp(prefix="luma_retrain_")
        np.save(os.path.join(self._dir, "sample.npy"), np.ascontiguousarray(sample, dtype=np.float32))
        if base is not None and params.get("mode", "full") != "full":
            faiss.write_index(quantizers_of(base), os.path.join(self._dir, "base.faiss"))
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
    base_path = os.path.join(folder, "base.faiss")
    base = faiss.read_index(base_path) if os.path.exists(base_path) else None
    index = train_ivfpq(sample, base=base, **params)
    tmp = os.path.join(folder, "index.faiss.tmp")
    faiss.write_index(index, tmp)
    os.replace(tmp, os.path.join(folder, "index.faiss"))


if __name__ == "__main__":
    _main(sys.argv[1])
