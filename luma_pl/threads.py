"""One thread per process on CPU, as a setting.

On small machines torch's intra-op pool, the BLAS pool and faiss' OpenMP pool each default to
one thread per core; two processes (a DataLoader worker, a DDP peer, a benchmark beside a test)
then oversubscribe the cores and a 512x512 SVD goes from ~36 ms to ~7 s. Lightning's CPU DDP
already pins torch to one thread per process; we do the same for every pool, by default.
"""

from __future__ import annotations

import os

ENV_VAR = "LUMA_NUM_THREADS"


def default_num_threads() -> int:
    """Threads per process: ``$LUMA_NUM_THREADS`` if set, else 1."""
    raw = os.environ.get(ENV_VAR, "1")
    try:
        n = int(raw)
    except ValueError as err:
        raise ValueError(
            f"{ENV_VAR}={raw!r} is not an integer; set it to a positive thread count, e.g. {ENV_VAR}=1"
        ) from err
    if n < 1:
        raise ValueError(f"{ENV_VAR}={n} must be >= 1; set it to a positive thread count, e.g. {ENV_VAR}=1")
    return n


def limit_cpu_threads(num_threads: int | None = None) -> int:
    """Cap torch, BLAS/OpenMP (through threadpoolctl) and faiss to ``num_threads`` each.

    Returns the count applied. Safe to call repeatedly (e.g. in every DataLoader worker).
    """
    n = default_num_threads() if num_threads is None else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads={num_threads} must be >= 1; pass a positive thread count")
    import torch
    from threadpoolctl import threadpool_limits

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    threadpool_limits(limits=n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # faiss is an extra; nothing to cap without it
        pass
    return n
