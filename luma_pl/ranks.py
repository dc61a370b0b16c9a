"""Where this process stands in its process group: the one rank helper of the project.

Without ``torch.distributed`` (not built, or no process group initialised) a process is rank 0 of
a world of 1; every caller (bridges, admission, memory, callbacks, the evaluator, the replay) asks
here instead of repeating the ``is_available() and is_initialized()`` check.
"""

from __future__ import annotations

import torch.distributed as dist


def initialised() -> bool:
    """A process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size(group=None) -> int:
    return dist.get_world_size(group) if initialised() else 1


def rank(group=None) -> int:
    return dist.get_rank(group) if initialised() else 0


def rank_and_world(group=None) -> tuple[int, int]:
    return rank(group), world_size(group)


def is_distributed(group=None) -> bool:
    """More than one rank: collectives are needed."""
    return world_size(group) > 1
