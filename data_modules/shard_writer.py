"""Write shards in both sample kinds, plus ``manifest.json``.

``ShardSetWriter`` rolls over to a new ``<name>-%06d.tar`` after ``events_per_shard`` events and
records each shard's event count, the spaces (name -> d) and the media extensions as it goes, so
the manifest costs nothing to produce. Written with the standard ``tarfile`` (what webdataset's
``TarWriter`` wraps), with fixed mtime/uid/gid so a rebuild from the same inputs is byte-identical.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .shard_format import (
    BLOCK_MARKER,
    MEDIA_EXTS,
    REFUSED_EXTS,
    RELEVANT_EXT,
    SPACE_RE,
    Manifest,
    ShardInfo,
    shard_name,
    write_manifest,
)


def _relevant_list(value, what: str) -> list[str]:
    """A relevance label as written: a list of event-key strings (a bare string is refused, not split)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{what}={value!r:.80} must be a list of event-key strings (the keys of the relevant "
                         "items), e.g. ['img000017']; pass [] for a labelled query with no relevant item")
    out = list(value)
    for i, k in enumerate(out):
        if not isinstance(k, str) or not k:
            raise ValueError(f"{what}[{i}]={k!r} must be a non-empty event-key string (the key an item was "
                             "written with)")
    return out


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class ShardSetWriter:
    """Append events (one by one or as blocks) to a rolling set of shards.

    Args:
        folder: output folder (created).
        name: shard base name; files are ``<name>-000000.tar``, ...
        events_per_shard: start a new shard once the current one holds at least this many events
            (a block is never split, so a shard may hold up to one block more).
    """

    def __init__(self, folder: str | os.PathLike, name: str = "events", events_per_shard: int = 8192):
        if events_per_shard < 1:
            raise ValueError(f"events_per_shard={events_per_shard} must be >= 1, e.g. 8192")
        if not name or "/" in name:
            raise ValueError(f"name={name!r} must be a non-empty file stem without '/', e.g. 'events'")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.events_per_shard = events_per_shard
        self.shards: list[ShardInfo] = []
        self.spaces: dict[str, int] = {}
        self.media: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._seq = 0  # default key counter

    # --- low level -------------------------------------------------------------------------
    def _open_if_needed(self) -> None:
        if self._tar is not None and self.shards[-1].events >= self.events_per_shard:
            self._close_current()
        if self._tar is None:
            fname = shard_name(self.name, len(self.shards))
            self._tar = tarfile.open(self.folder / fname, mode="w", format=tarfile.PAX_FORMAT)
            self.shards.append(ShardInfo(name=fname, events=0))

    def _add(self, member: str, data: bytes) -> None:
        info = tarfile.TarInfo(member)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def _close_current(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            info = self.shards[-1]
            info.bytes = (self.folder / info.name).stat().st_size

    def _space(self, space: str, d: int) -> None:
        if not SPACE_RE.match(space):
            raise ValueError(f"space={space!r} must match {SPACE_RE.pattern} (it becomes '<space>.npy')")
        if self.spaces.setdefault(space, d) != d:
            raise ValueError(f"space {space!r} has d={self.spaces[space]} in earlier events but d={d} here; "
                             "one space has one dimension")

    # --- public --------------------------------------------------------------------------------
    def write_event(self, *, ts: int, key: str | None = None, topic: str | None = None,
                    emb: dict[str, np.ndarray] | None = None, media: dict[str, bytes | str] | None = None,
                    relevant: Sequence[str] | None = None) -> str:
        """One event sample. ``emb``: space -> ``(d,)`` float32; ``media``: ext -> bytes or str;
        ``relevant``: the keys of the events relevant to this one as a query (written as
        ``<key>.relevant.json``; ``[]``: a labelled query with no relevant item; None: not labelled)."""
        key = key if key is not None else f"{self._seq:09d}"
        if not key or "." in key or "/" in key:
            raise ValueError(f"key={key!r} must be non-empty without '.' or '/' (it is a tar member stem)")
        rel = None if relevant is None else _relevant_list(relevant, "relevant")
        self._open_if_needed()
        self._add(f"{key}.ts", str(int(ts)).encode())
        if topic:
            self._add(f"{key}.topic", topic.encode("utf-8"))
        for space, vec in sorted((emb or {}).items()):
            vec = np.asarray(vec, np.float32).reshape(-1)  # (d,)
            self._space(space, vec.shape[0])
            self._add(f"{key}.{space}.npy", _npy_bytes(vec))
        for ext, payload in sorted((media or {}).items()):
            if ext in REFUSED_EXTS or ext not in MEDIA_EXTS:
                raise ValueError(f"media ext={ext!r} is not writable; use one of {sorted(MEDIA_EXTS)}")
            self.media.add(ext)
            self._add(f"{key}.{ext}", payload.encode("utf-8") if isinstance(payload, str) else bytes(payload))
        if rel is not None:
            self._add(f"{key}.{RELEVANT_EXT}", json.dumps(rel, ensure_ascii=False).encode("utf-8"))
        self.shards[-1].events += 1
        self.shards[-1].samples += 1
        self._seq += 1
        return key

    def write_block(self, *, keys: Sequence[str], ts: np.ndarray, emb: dict[str, np.ndarray],
                    topics: Sequence[str] | None = None, texts: dict[str, Sequence[str]] | None = None,
                    block_key: str | None = None, relevant: Sequence[Sequence[str] | None] | None = None,
                    has: dict[str, np.ndarray] | None = None) -> None:
        """One block sample of n events: ``ts`` (n,), ``emb`` space -> (n, d), texts ext -> n strings,
        ``relevant`` n entries, each None (not a labelled query) or the keys of the events relevant
        to that one (``[]``: labelled, nothing relevant); stored as ``events.json``'s ``relevant``.
        ``has`` space -> (n,) bool: rows where it is False are events without that space (an image
        without a caption): written as zero rows and listed in ``events.json``'s ``absent``, so the
        replay gives them ``has`` False instead of counting a zero row as a bad embedding."""
        ts = np.asarray(ts, np.int64).reshape(-1)  # (n,)
        n = ts.shape[0]
        if len(keys) != n:
            raise ValueError(f"keys has {len(keys)} entries but ts has {n}; pass one key per event")
        topics = list(topics) if topics is not None else [""] * n
        texts = {e: list(v) for e, v in (texts or {}).items()}
        for ext, col in texts.items():
            if not ext.endswith("txt") or len(col) != n:
                raise ValueError(f"texts[{ext!r}] must be a *txt column of {n} strings, got {len(col)}")
        rel = None
        if relevant is not None:
            if isinstance(relevant, (str, bytes)) or not isinstance(relevant, Sequence) or len(relevant) != n:
                got = f"{len(relevant)} entries" if isinstance(relevant, Sequence) else type(relevant).__name__
                raise ValueError(f"relevant must be a list of {n} entries (one per event: None or a list of event "
                                 f"keys), got {got}")
            rel = [None if r is None else _relevant_list(r, f"relevant[{i}]") for i, r in enumerate(relevant)]
        arrays = {}
        for space, arr in sorted(emb.items()):  # checked before anything is written
            arr = np.ascontiguousarray(arr, np.float32)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise ValueError(f"emb[{space!r}] has shape {arr.shape}; expected ({n}, d)")
            arrays[space] = arr
        absent = {}
        for space, mask in (has or {}).items():
            mask = np.asarray(mask)
            if space not in arrays or mask.dtype != bool or mask.shape != (n,):
                raise ValueError(f"has[{space!r}] must be a ({n},) bool array for a space in emb "
                                 f"({sorted(arrays)}), got {mask.dtype} {mask.shape}")
            if not mask.all():
                absent[space] = np.flatnonzero(~mask).tolist()
                arrays[space] = arrays[space].copy()
                arrays[space][~mask] = 0.0
        self._open_if_needed()
        bkey = block_key or f"block{self._seq:09d}"
        meta = {"keys": [str(k) for k in keys], "topics": [str(t) for t in topics], "text": texts}
        if rel is not None:
            meta["relevant"] = rel
        if absent:
            meta["absent"] = absent
        self._add(f"{bkey}.{BLOCK_MARKER}", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        self._add(f"{bkey}.ts.npy", _npy_bytes(ts))
        for space, arr in arrays.items():
            self._space(space, arr.shape[1])
            self._add(f"{bkey}.{space}.npy", _npy_bytes(arr))
        self.media.update(texts)
        self.shards[-1].events += n
        self.shards[-1].samples += 1
        self._seq += 1

    def close(self) -> Manifest:
        """Close the last shard and write ``manifest.json``; returns the manifest."""
        self._close_current()
        manifest = Manifest(shards=list(self.shards), spaces=dict(self.spaces), media=sorted(self.media))
        write_manifest(manifest, self.folder)
        return manifest

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_blocks(folder: str | os.PathLike, *, keys: Sequence[str], ts: np.ndarray,
                 emb: dict[str, np.ndarray], topics: Sequence[str] | None = None,
                 texts: dict[str, Sequence[str]] | None = None, name: str = "events",
                 block_events: int = 1024, events_per_shard: int = 8192,
                 relevant: Sequence[Sequence[str] | None] | None = None,
                 has: dict[str, np.ndarray] | None = None) -> Manifest:
    """Write arrays of n events as block shards: rows ``[i, i + block_events)`` per block.
    ``relevant``: n entries (None or the relevant event keys of that query event), cut with the blocks;
    ``has``: space -> (n,) bool, False for events without that space (see ``write_block``)."""
    n = len(keys)
    if relevant is not None and (isinstance(relevant, (str, bytes)) or not isinstance(relevant, Sequence)
                                 or len(relevant) != n):
        got = f"{len(relevant)} entries" if isinstance(relevant, Sequence) else type(relevant).__name__
        raise ValueError(f"relevant must be a list of {n} entries (one per key: None or a list of event keys), "
                         f"got {got}")
    with ShardSetWriter(folder, name, events_per_shard) as w:
        for i in range(0, n, block_events):
            j = min(i + block_events, n)
            w.write_block(keys=keys[i:j], ts=ts[i:j], emb={s: a[i:j] for s, a in emb.items()},
                          topics=None if topics is None else topics[i:j],
                          texts={e: c[i:j] for e, c in (texts or {}).items()},
                          relevant=None if relevant is None else relevant[i:j],
                          has=None if has is None else {sp: np.asarray(m)[i:j] for sp, m in has.items()})
    return Manifest.from_json(json.loads((Path(folder) / "manifest.json").read_text()))
