"""Training the warm tier's IVFPQ, here or in a background process.

At d=512 with 64 x 8-bit PQ, one training on ~10k points takes ~6.8 s on one thread, and a drifting
stream retrains every few thousand warm items (``MemoryConfig.retrain_drift_factor``): done in line,
that stalls ingest for seconds each time. ``BackgroundTrainer`` runs it in one spawned worker
process instead. A thread would not do: faiss's k-means takes the GIL back often enough that a
training beside a busy Python thread ran 14.6 s instead of 6.8 s here, while in a process it ran
6.9 s with the main process at full speed.

The memory keeps its determinism: the training sample is chosen when the job starts (seeded), the
new index is installed at a fixed later insert (``retrain_lag_inserts``, waiting for the worker if it
is not done), and a memory saved while a job runs saves the job (the sample's keys and the install
point), which ``load`` starts again. faiss k-means with a fixed seed on one thread gives the same
index in any process, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

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


def _train_serialized(sample: np.ndarray, params: dict) -> np.ndarray:
    """Worker side: train on ``sample`` (n, d) float32 and return the index as faiss bytes (uint8)."""
    faiss.omp_set_num_threads(int(params.pop("threads", 1)))
    index = new_ivfpq(**params)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return faiss.serialize_index(index)


class BackgroundTrainer:
    """One worker process (spawned on first use, reused) training one index at a time."""

    def __init__(self, threads: int = 1):
        self.threads = int(threads)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._future: cf.Future | None = None

    @property
    def pending(self) -> bool:
        return self._future is not None

    @property
    def done(self) -> bool:
        return self._future is not None and self._future.done()

    def submit(self, sample: np.ndarray, **params) -> None:
        if self._future is not None:
            raise RuntimeError("a training is already running; take its result() first")
        if self._pool is None:
            # spawn, not fork: the parent may hold torch/OpenMP/gloo threads that a fork would copy
            self._pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self._future = self._pool.submit(_train_serialized, np.ascontiguousarray(sample, dtype=np.float32),
                                         {**params, "threads": self.threads})

    def result(self) -> faiss.IndexIVFPQ:
        """The trained index (blocks until the worker is done); the trainer is free again after."""
        if self._future is None:
            raise RuntimeError("no training was submitted")
        future, self._future = self._future, None
        return faiss.deserialize_index(np.asarray(future.result(), dtype=np.uint8))

    def cancel(self) -> None:
        """Forget a running job (its result is discarded)."""
        if self._future is not None:
            self._future.cancel()
            self._future = None

    def close(self) -> None:
        self.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
