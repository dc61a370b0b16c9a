"""Test-wide settings: no network, one thread per process, GPU tests skipped without CUDA."""

from __future__ import annotations

import os

# Never reach a hub or W&B's servers from a test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("LUMA_NUM_THREADS", "1")

import pytest  # noqa: E402

from luma_pl.threads import limit_cpu_threads  # noqa: E402

limit_cpu_threads()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (runs on GPU machines)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _finish_wandb_run():
    """A WandbLogger's run outlives its Trainer; a later test's logger would silently reuse it."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
