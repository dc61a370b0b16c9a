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


def good_and_hostile_block(folder, field: str, value, d: int = 4, seed: int = 1) -> None:
    """A shard folder (``h-000000.tar`` + manifest) holding a good 4-event block ``good0..3`` and a
    block ``bad0..3`` whose ``events.json`` carries ``field: value`` (the hostile content under test)."""
    import json
    from pathlib import Path

    from data_modules import write_manifest
    from data_modules.shard_format import scan_manifest

    folder = Path(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with tarfile.open(folder / "h-000000.tar", "w") as tar:
        for b, extra in (("good", {}), ("bad", {field: value})):
            meta = {"keys": [f"{b}{i}" for i in range(4)], "topics": [""] * 4, "text": {}, **extra}
            x = rng.standard_normal((4, d)).astype(np.float32)
            add_member(tar, f"{b}.events.json", json.dumps(meta).encode())
            add_member(tar, f"{b}.ts.npy", npy_bytes(np.arange(4, dtype=np.int64)))
            add_member(tar, f"{b}.x.npy", npy_bytes(x / np.linalg.norm(x, axis=1, keepdims=True)))
    write_manifest(scan_manifest(sorted(folder.glob("*.tar")), root=folder), folder)
