"""Save / load a whole TieredMemory, and its ``state_dict`` for Lightning checkpoints.

On disk (``save(memory, path)``), built in ``path.tmp-<pid>`` and renamed into place, so a crash
leaves the old snapshot or the new one, never a mix:
- ``arrays.npz``     numpy arrays only (faiss indexes as ``serialize_index`` bytes), no pickle
- ``meta.json``      config, counters, scalars, and a CRC32 per array (checked on load)
- ``originals.f32`` + ``originals.json``  the committed originals (own CRC, checked on load)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
import zipfile
import zlib

import numpy as np

from luma_pl.memory.config import MemoryConfig
from luma_pl.memory.originals import OriginalsStore, _fsync_dir, write_json_atomic
from luma_pl.memory.tiered import (
    MIGRATION_ARRAYS,
    MIGRATION_COUNTER_ARRAYS,
    TieredMemory,
    migration_arrays,
    migration_scalars,
)

FORMAT_VERSION = 1


def _arrays(memory: TieredMemory) -> dict[str, np.ndarray]:
    n = memory.num_keys
    w = memory.warm
    return {
        **memory.hot.state_arrays(),  # hot_index, hot_ids, hot_live, hot_segments
        "warm_index": w.index_bytes(),
        "warm_generations": w.generation_table(),
        "warm_buf_ids": w.buf_ids,
        "warm_buf_vecs": w.buf_vecs,
        "warm_recent": w.recent_zeta(),
        "ids": memory.ids[:n],
        "locations": memory.locations[:n],
        "hits": memory.hits[:n],
        "last_access": memory.last_access[:n],
        "zeta": memory.zeta[:n],
        "labels": memory.labels[:n],
        "retrain_keys": memory.retrain_keys,
    } | migration_arrays(memory.migration)


_ARRAY_NAMES = ("hot_index", "hot_ids", "hot_live", "warm_index", "warm_buf_ids", "warm_buf_vecs", "warm_recent",
                "ids", "locations", "hits", "last_access", "zeta")
_OPTIONAL_ARRAYS = ("hot_segments", "warm_generations", "retrain_keys", "labels", *(f"migration_{n}" for n in MIGRATION_ARRAYS),
                    *(f"migration_counter_{n}" for n in MIGRATION_COUNTER_ARRAYS))
"""Absent from snapshots written before these were kept."""


def _scalars(memory: TieredMemory) -> dict:
    return {
        "format": FORMAT_VERSION,
        "config": memory.cfg.to_dict(),
        "counters": dict(memory.counters),
        "num_keys": memory.num_keys,
        "hot_rebuilds": memory.hot.rebuilds,
        "hot_seals": memory.hot.seals,
        "hot_segment_drops": memory.hot.drops,
        "warm_train_zeta_mean": memory.warm.train_zeta_mean,
        "warm_trainings": memory.warm.trainings,
        "warm_merges": memory.warm.merges,
        "retrain_at": int(memory.retrain_at),
        "migration": migration_scalars(memory.migration),
    }


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


LOCK_TIMEOUT_S = 5.0
"""How long save/load retry a busy snapshot lock before raising SnapshotBusyError."""


class SnapshotBusyError(TimeoutError):
    """Another process holds the snapshot's lock (a save, or a load while we save)."""


def _same_file(fd: int, lock_path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(lock_path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(fd: int) -> str:
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip() or 0)
        if pid:
            os.kill(pid, 0)
            return f"pid {pid} (saving it)"
    except (ValueError, OSError):
        pass
    return "another process (a load, or a save that recorded no pid)"


@contextlib.contextmanager
def _locked(path: str, exclusive: bool, timeout: float = LOCK_TIMEOUT_S):
    """flock ``path + '.lock'``: LOCK_EX for save, LOCK_SH for load, so two saves (which would delete
    each other's ``path.tmp-*``) or a save and a load (which would see the folder mid-rename) never
    overlap. Non-blocking, retried for ``timeout`` seconds, then SnapshotBusyError. The kernel drops
    an flock when its holder dies, so a kill -9 never leaves a stale lock. The last holder unlinks the
    lock file (under LOCK_EX, after checking the path still names the locked inode; a waiter that
    locked an unlinked inode sees the mismatch and retries), so the parent folder holds only the
    snapshot afterwards. A load where the lock file cannot be created (read-only filesystem, no
    write permission) proceeds without it: nobody can be saving there."""
    lock_path = path + ".lock"
    deadline = time.monotonic() + max(0.0, float(timeout))
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if exclusive or err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT):
                raise
            try:
                fd = os.open(lock_path, os.O_RDONLY)
            except OSError:
                yield
                return
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise SnapshotBusyError(
                    f"saved memory {path!r} is locked ({lock_path!r}) by {who}; this "
                    f"{'save' if exclusive else 'load'} waited {timeout:.1f}s. Wait for that process to "
                    "finish and retry, pass lock_timeout= a larger value, or use another path") from None
            time.sleep(0.02)
            continue
        if _same_file(fd, lock_path):
            break
        os.close(fd)  # the previous holder removed the file while we waited: lock the new one
    try:
        if exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a load: only the last one out removes it
            if _same_file(fd, lock_path):
                os.unlink(lock_path)
        except OSError:
            pass
        finally:
            os.close(fd)


def save(memory: TieredMemory, path: str, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
    """Hold the snapshot's exclusive lock (see ``_locked``) and write the memory (``_save``)."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _locked(path, exclusive=True, timeout=lock_timeout):
        _save(memory, path)


def _save(memory: TieredMemory, path: str) -> None:
    """Write the whole memory to directory ``path`` atomically (replacing an older snapshot).

    A failure while writing (disk full, ...) removes the half-written ``path.tmp-<pid>`` and leaves
    the previous snapshot as it was. A crash between the two renames below leaves the old snapshot
    at ``path.old-<pid>`` and the complete new one at ``path.tmp-<pid>``; ``load`` recovers it.
    """
    path = os.path.abspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        arrays = _arrays(memory)
        with open(os.path.join(tmp, "arrays.npz"), "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        meta = _scalars(memory) | {"crc32": {k: _crc(v) for k, v in arrays.items()}}
        memory.originals.copy_committed_to(tmp)
        write_json_atomic(os.path.join(tmp, "meta.json"), meta)  # last: its presence marks tmp complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):  # rename the old one aside first: os.replace cannot replace a non-empty dir
        old = f"{path}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))
    # leftovers of saves killed earlier (other pids): the snapshot at path is newer than all of them,
    # and under the exclusive lock no live save is writing one
    parent, base = os.path.split(path)
    for name in os.listdir(parent):
        if name.startswith((f"{base}.tmp-", f"{base}.old-")):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _recover(path: str) -> str:
    """Finish a save that crashed between its two renames: ``path`` is missing, the complete new
    snapshot is ``path.tmp-<pid>`` (it has meta.json, written last) or the old one ``path.old-<pid>``.
    Return the folder to load: ``path``, or the candidate itself when it cannot be renamed (a
    read-only filesystem: the snapshot is read where it is, nothing is written). Another loader that
    recovered it first is not an error."""
    if os.path.exists(path):
        return path
    parent, base = os.path.split(path)
    try:
        names = sorted(os.listdir(parent or "."))
    except FileNotFoundError:
        return path
    for prefix in (f"{base}.tmp-", f"{base}.old-"):
        for name in names:
            cand = os.path.join(parent, name)
            if name.startswith(prefix) and os.path.exists(os.path.join(cand, "meta.json")):
                try:
                    os.replace(cand, path)
                except OSError as err:
                    if os.path.isdir(path):  # a concurrent load recovered it first
                        return path
                    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                        return cand
                    raise
                return path
    return path


def load(path: str, directory: str | None = None, lock_timeout: float = LOCK_TIMEOUT_S) -> TieredMemory:
    """Hold the snapshot's shared lock (a concurrent save waits; see ``_locked``) and load it (``_load``)."""
    path = os.path.abspath(path)
    with _locked(path, exclusive=False, timeout=lock_timeout):
        return _load(path, directory)


def _load(path: str, directory: str | None = None) -> TieredMemory:
    """Open a saved memory; its originals are copied into ``directory`` (a temp dir by default),
    so the snapshot stays unchanged while the loaded memory keeps appending.

    Validated before use: the format, every array's presence and CRC32 (the table must cover all of
    them), the originals' CRC and row count, shapes and counts against each other, then ``audit()``.
    Any failure is a ``ValueError`` naming the snapshot and the file; nothing half-loaded is returned.
    """
    path = os.path.abspath(path)
    if directory is not None:
        d = os.path.abspath(directory)
        if os.path.commonpath([d, path]) == path:
            raise ValueError(f"directory={directory!r} is inside the snapshot {path!r}; load never writes into "
                             "a snapshot: pass another folder for the loaded memory's originals (or None)")
    name = path
    path = _recover(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"saved memory {name!r} does not exist; pass the folder written by save()")
    where = f"saved memory {name!r}" + (f" (recovered from {path!r})" if path != name else "")
    try:
        with open(os.path.join(path, "meta.json"), "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("meta.json is not a JSON object")
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{where}: meta.json is missing or corrupt ({type(err).__name__}: {err}); "
                         "restore an older snapshot or rebuild the memory") from err
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{where}: memory format {meta.get('format')} is not {FORMAT_VERSION}")
    try:
        with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as z:
            arrays = {k[:-4] if k.endswith(".npy") else k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{where}: arrays.npz is missing or corrupt ({type(err).__name__}: {err}); "
                         "restore an older snapshot or rebuild the memory") from err
    crcs = meta.get("crc32")
    expected = set(_ARRAY_NAMES)
    optional = set(arrays) & set(_OPTIONAL_ARRAYS)
    if not isinstance(crcs, dict) or set(crcs) != expected | optional or set(arrays) != expected | optional:
        have = sorted(arrays)
        raise ValueError(f"{where}: arrays.npz holds {have} and meta.json checksums "
                         f"{sorted(crcs) if isinstance(crcs, dict) else crcs!r}; both must be exactly "
                         f"{sorted(expected)} (the files do not belong together or were edited)")
    for k, crc in crcs.items():
        if _crc(arrays[k]) != crc:
            raise ValueError(f"{where}: array {k!r} in arrays.npz fails its checksum (file corrupted)")
    try:
        cfg = MemoryConfig.from_dict(meta["config"])
        # read-only: the snapshot may sit on a read-only filesystem and must stay byte-identical
        snapshot = OriginalsStore(path, cfg.dim, read_only=True)
        snapshot.verify()
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise ValueError(f"{where}: config or originals.f32/originals.json unusable ({type(err).__name__}: {err}); "
                         "restore an older snapshot or rebuild the memory") from err
    try:
        memory = TieredMemory(cfg, directory=directory)
        try:  # the loaded memory appends to its own copy of the originals, in its directory
            memory.originals.close()
            snapshot.copy_committed_to(memory.directory)
            memory.originals = OriginalsStore(memory.directory, cfg.dim, sync_rows=cfg.originals_sync_rows)
            memory.restore_state(arrays, meta)
        except (KeyError, TypeError, ValueError, AssertionError, RuntimeError) as err:
            memory.close()
            raise ValueError(f"{where} is inconsistent: {err}; restore an older snapshot or rebuild the memory") from err
        except BaseException:
            memory.close()
            raise
    finally:
        snapshot.close()
    return memory


def state_dict(memory: TieredMemory) -> dict:
    """numpy arrays and primitives only (Lightning / torch.load(weights_only=True) friendly). The
    arrays are copies: the state does not change when the memory does afterwards (``_arrays`` hands
    out views of the live per-key arrays)."""
    n = memory.num_keys
    originals = memory.originals.get(np.arange(n)) if n else np.empty((0, memory.cfg.dim), np.float32)
    arrays = {k: np.array(v, copy=True) for k, v in _arrays(memory).items()}
    return {"arrays": arrays | {"originals": originals}, "meta": json.dumps(_scalars(memory))}


def from_state_dict(state: dict, directory: str | None = None) -> TieredMemory:
    meta = json.loads(state["meta"])
    arrays = {k: np.asarray(v) for k, v in state["arrays"].items()}
    cfg = MemoryConfig.from_dict(meta["config"])
    memory = TieredMemory(cfg, directory=directory)
    try:
        memory.originals.append(arrays.pop("originals").astype(np.float32).reshape(-1, cfg.dim))
        memory.restore_state(arrays, meta)
    except BaseException:
        memory.close()  # a refused state leaves no half-built memory (and no temp folder) behind
        raise
    return memory
