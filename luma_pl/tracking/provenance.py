"""``provenance()``: what a result needs beside it to be reproduced or told apart from another.

Recorded in ``report.json`` and in every W&B run's config: the versions of the packages that shape
the numbers, the git commit of the code (and whether the work tree had uncommitted changes), the
machine (platform, processor count, accelerator) and the seed Lightning's ``seed_everything`` set.
Nothing here raises: a field that cannot be read (no git, a package not installed) is ``None``.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("luma-pl", "torch", "lightning", "faiss-cpu", "faiss-gpu", "numpy", "scipy", "torchmetrics",
            "open-clip-torch", "transformers", "webdataset", "wandb")
"""Distributions whose versions are recorded (one not installed is left out)."""

REPO = Path(__file__).resolve().parents[2]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_state(root: str = str(REPO)) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding this code."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _accelerator() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - a broken CUDA install must not break the report
        return None
    return None


def provenance() -> dict:
    """Versions, git, machine and seed of this process (see the module docstring)."""
    versions = {d: v for d in PACKAGES if (v := _version(d)) is not None}
    seed = os.environ.get("PL_GLOBAL_SEED")
    return {"versions": {"python": platform.python_version(), **versions}, "git": dict(git_state()),
            "machine": {"platform": platform.platform(), "processor": platform.machine(),
                        "cpus": os.cpu_count(), "accelerator": _accelerator(),
                        "threads": os.environ.get("LUMA_NUM_THREADS")},
            "seed": int(seed) if seed is not None and seed.lstrip("-").isdigit() else None}
