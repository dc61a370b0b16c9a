"""Append-only, memory-mapped, crash-safe store of every admitted item's float32 original.

Layout in ``directory``:
- ``originals.f32``  rows of d float32 values, appended, never rewritten.
- ``originals.json`` ``{"dim", "rows", "crc32"}``: the committed length, replaced atomically
  (write tmp, fsync, os.replace, fsync dir) only after the appended rows were fsynced.

A crash between the two leaves an uncommitted tail in the data file; ``open`` ignores it and the
next append overwrites it. Group commit: with ``sync_rows`` > 1, appended rows are written (and
readable at once through the memory map) but fsynced and committed only once ``sync_rows`` rows are
pending, on ``commit()``, on ``close()`` and before ``copy_committed_to`` (so a saved memory always holds
every row). A crash then loses at most the last ``sync_rows - 1`` rows of the live store, never its
consistency; the live store is scratch space anyway (a crashed memory is reopened from its last
``save()``). Three fsyncs per 256-row batch cost ~10 ms on this machine's disk, i.e. ~20% of the
ingest time of the indexes themselves, which is why the memory groups them. A torn header write is impossible (rename is atomic). The CRC covers the
committed bytes and is checked by ``verify()`` (used when a saved memory is loaded).

``read_only=True`` opens a saved snapshot without ever writing to it (a read-only filesystem, a
shared or archived snapshot): the data file is opened 'rb', no header is created, ``commit()`` does
nothing and ``append`` raises. ``persistence.load`` verifies and copies a snapshot this way.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

DATA_NAME = "originals.f32"
HEADER_NAME = "originals.json"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, obj: dict) -> None:
    """Write JSON to ``path`` so that readers see the old or the new file, never a torn one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


class OriginalsStore:
    """Row-addressed store of (rows, d) float32 originals; rows are assigned in append order."""

    def __init__(self, directory: str, dim: int, sync_rows: int = 1, read_only: bool = False):
        self.directory = directory
        self.dim = int(dim)
        self.sync_rows = max(1, int(sync_rows))
        self.read_only = bool(read_only)
        self._row_bytes = 4 * self.dim
        if not self.read_only:
            os.makedirs(directory, exist_ok=True)
        self._data_path = os.path.join(directory, DATA_NAME)
        self._header_path = os.path.join(directory, HEADER_NAME)
        self.rows = 0  # rows written (readable); ``_committed`` of them are fsynced and in the header
        self._committed = 0
        self._crc = 0
        if os.path.exists(self._header_path):
            with open(self._header_path) as f:
                head = json.load(f)
            if int(head["dim"]) != self.dim:
                raise ValueError(
                    f"originals store {directory!r} holds dim={head['dim']} vectors, not dim={self.dim}; "
                    "open it with the dimension it was written with"
                )
            self.rows, self._crc = int(head["rows"]), int(head["crc32"])
            self._committed = self.rows
            size = os.path.getsize(self._data_path) if os.path.exists(self._data_path) else 0
            if size < self.rows * self._row_bytes:
                raise ValueError(
                    f"originals store {directory!r} is truncated: header commits {self.rows} rows "
                    f"({self.rows * self._row_bytes} bytes) but the data file has {size} bytes"
                )
        elif self.read_only:  # creating the header would write into the folder we were told not to touch
            raise FileNotFoundError(
                f"originals store {directory!r} has no {HEADER_NAME}; read_only=True opens an existing store "
                "only (pass the folder a memory was saved to, or read_only=False to create one)"
            )
        else:
            write_json_atomic(self._header_path, {"dim": self.dim, "rows": 0, "crc32": 0})
        self._map: np.ndarray | None = None
        self._file = None  # read-only: reads go through the memory map (mode 'r'), no handle that could write
        if self.read_only:
            return
        # 'a+b' would force writes to the end; we need to overwrite an uncommitted tail instead.
        mode = "r+b" if os.path.exists(self._data_path) else "w+b"
        self._file = open(self._data_path, mode)

    # -- writing -------------------------------------------------------------------------------
    def append(self, vectors: np.ndarray) -> np.ndarray:
        """Append (n, d) float32 rows (committed now, or once ``sync_rows`` are pending); return their
        row numbers (n,) int64.

        Failure-atomic: if the write or the commit it triggers fails (disk full, I/O error), the store
        is as before the call (``rows`` and the CRC roll back; the bytes written stay as an uncommitted
        tail that the next append overwrites) and the error propagates. Callers such as
        ``TieredMemory.insert`` rely on this to change nothing else until the originals are stored."""
        if self.read_only:
            raise PermissionError(
                f"originals store {self.directory!r} was opened with read_only=True; it cannot append. "
                "Append to a writable copy (persistence.load copies a snapshot into its directory=)"
            )
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors must be (n, {self.dim}) float32, got shape {x.shape}")
        start, crc = self.rows, self._crc
        if len(x) == 0:
            return np.empty(0, dtype=np.int64)
        payload = x.tobytes()
        try:
            self._file.seek(start * self._row_bytes)  # overwrites any uncommitted tail
            self._file.write(payload)
            self._file.flush()  # readable through a fresh memory map from now on
            self._crc = zlib.crc32(payload, self._crc)
            self.rows = start + len(x)
            self._map = None  # the mapping covers the old length; remap lazily
            if self.rows - self._committed >= self.sync_rows:
                self.commit()
        except BaseException:
            # rows pending from earlier appends (group commit) stay pending; only this call is undone
            self.rows, self._crc, self._map = start, crc, None
            raise
        return np.arange(start, self.rows, dtype=np.int64)

    def commit(self) -> None:
        """fsync the written rows, then atomically publish their count and CRC in the header (a
        read-only store has nothing to commit)."""
        if self.read_only or self._committed == self.rows or self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        write_json_atomic(self._header_path, {"dim": self.dim, "rows": self.rows, "crc32": self._crc})
        self._committed = self.rows

    # -- reading -------------------------------------------------------------------------------
    def _mapped(self) -> np.ndarray:
        if self._map is None or len(self._map) != self.rows:
            if self.rows == 0:
                return np.empty((0, self.dim), dtype=np.float32)
            self._map = np.memmap(self._data_path, dtype=np.float32, mode="r", shape=(self.rows, self.dim))
        return self._map

    def get(self, rows: np.ndarray) -> np.ndarray:
        """(n, d) float32 copies of the given committed rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"row out of range [0, {self.rows}) in originals store")
        return np.array(self._mapped()[rows], dtype=np.float32)

    def verify(self) -> None:
        """Recompute the CRC of the committed bytes; raise ValueError on mismatch (corruption)."""
        crc = 0
        block = 1 << 16
        m = self._mapped()
        for s in range(0, self.rows, block):
            crc = zlib.crc32(np.ascontiguousarray(m[s : s + block]).tobytes(), crc)
        if crc != self._crc:
            raise ValueError(f"originals store {self.directory!r}: checksum mismatch (file corrupted)")

    @property
    def crc32(self) -> int:
        return self._crc

    def copy_committed_to(self, directory: str) -> None:
        """Commit, then write the committed rows and header into another directory (used by ``save``)."""
        self.commit()
        if os.path.abspath(directory) == os.path.abspath(self.directory):
            raise ValueError(f"copy_committed_to(directory={directory!r}) names this store's own folder; "
                             "pass another directory")
        os.makedirs(directory, exist_ok=True)
        dst = os.path.join(directory, DATA_NAME)
        with open(dst, "wb") as out:
            left = self.rows * self._row_bytes
            if left:
                with open(self._data_path, "rb") as src:
                    while left:
                        chunk = src.read(min(left, 1 << 24))
                        if not chunk:
                            raise ValueError(f"originals store {self.directory!r} is truncated: "
                                             f"{left} committed bytes are missing from {DATA_NAME}")
                        out.write(chunk)
                        left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        write_json_atomic(os.path.join(directory, HEADER_NAME), {"dim": self.dim, "rows": self.rows, "crc32": self._crc})

    def close(self) -> None:
        if self._file is not None:
            self.commit()
            if not self._file.closed:
                self._file.close()
        self._map = None
