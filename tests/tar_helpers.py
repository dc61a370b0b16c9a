"""Hand-built tar members and .npy payloads for the shard tests (malformed on purpose where needed)."""

from __future__ import annotations

import io
import tarfile

import numpy as np


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append one regular-file member ``name`` holding ``data``."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def npy_bytes(arr) -> bytes:
    """``arr`` serialised with ``np.save`` (what a ``.npy`` shard entry holds)."""
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()
