"""The on-disk shard format: names, sample kinds, and the manifest.

Shards are WebDataset tar files named ``<name>-%06d.tar``. A tar member ``<key>.<ext>`` belongs
to sample ``<key>`` (everything before the first dot of the basename, as WebDataset splits it).

Two sample kinds live in the same shards:

* **event** sample: one event. Entries ``ts`` (decimal text), optional ``topic`` (text), raw media
  (``jpg``/``png``/``flac``/``wav``/``txt``/``query.txt``) and/or ``<space>.npy`` of shape ``(d,)``.
* **block** sample: many events (e.g. 1024) of precomputed embeddings. Entries ``events.json``
  (``{"keys": [n], "topics": [n], "text": {ext: [n]}}``), ``ts.npy`` ``(n,)`` int64 and
  ``<space>.npy`` ``(n, d)`` float32. Why: one tar member per 512-d vector is bounded by per-member
  overhead (~2,600 samples/s through webdataset's generic pipeline); a block is one member per
  space per 1024 events and reads at memory speed.

``manifest.json`` beside the shards lists each shard's event count, the spaces with their dims and
the media extensions, so the replay plans its batch counts without reading a shard. When it is
absent, ``scan_manifest`` builds it by reading tar headers (and the small ``events.json`` entries).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "{name}-{index:06d}.tar"
SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<index>\d{6})\.tar$")

# Entries that are never decoded: each is a pickle (or a torch pickle) and unpickling runs code.
REFUSED_EXTS = frozenset({"pyd", "pickle", "pkl", "pth"})
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png"})
AUDIO_EXTS = frozenset({"flac", "wav"})
# Source files only (build_shards folder): shards carry their frame embeddings, not the video bytes.
VIDEO_EXTS = frozenset({"mp4", "webm", "mkv", "mov", "avi"})
TEXT_EXTS = frozenset({"txt", "query.txt"})
MEDIA_EXTS = IMAGE_EXTS | AUDIO_EXTS | TEXT_EXTS
# Entries with a meaning of their own (not media, not embeddings).
META_EXTS = frozenset({"ts", "topic", "events.json", "ts.npy"})
BLOCK_MARKER = "events.json"
SPACE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def shard_name(name: str, index: int) -> str:
    """``shard_name('demo', 3) == 'demo-000003.tar'``."""
    return SHARD_PATTERN.format(name=name, index=index)


def split_member_name(path: str) -> tuple[str, str]:
    """``'dir/000017.query_minilm.npy'`` -> ``('dir/000017', 'query_minilm.npy')``.

    The extension is lower-cased; a name without a dot has extension ``''``.
    """
    head, _, base = path.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext.lower() if dot else ""


def space_of(ext: str) -> str | None:
    """``'minilm.npy'`` -> ``'minilm'``; ``None`` for extensions that are not an embedding."""
    if not ext.endswith(".npy") or ext in META_EXTS:
        return None
    space = ext[: -len(".npy")]
    return space if SPACE_RE.match(space) else None


@dataclass
class ShardInfo:
    """One shard in the manifest."""

    name: str
    """File name relative to the manifest's folder, e.g. ``'demo-000000.tar'``."""
    events: int
    """Number of events (block rows + event samples) the shard holds."""
    samples: int = 0
    """Number of tar samples (a block counts once)."""
    bytes: int = 0
    """File size in bytes when the manifest was written (a cheap staleness check)."""


@dataclass
class Manifest:
    """What the replay needs to know about a shard set before reading it."""

    shards: list[ShardInfo]
    """Shards in stream order."""
    spaces: dict[str, int] = field(default_factory=dict)
    """Embedding space name -> dimension d of its ``<space>.npy`` entries."""
    media: list[str] = field(default_factory=list)
    """Raw media extensions present in any sample (``txt``, ``jpg``...), sorted."""
    version: int = FORMAT_VERSION
    """Format version; readers refuse a newer one."""

    @property
    def total_events(self) -> int:
        return sum(s.events for s in self.shards)

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "spaces": dict(sorted(self.spaces.items())),
            "media": sorted(self.media),
            "shards": [vars(s) for s in self.shards],
        }

    @classmethod
    def from_json(cls, obj: dict, where: str = "manifest") -> Manifest:
        version = int(obj.get("version", 0))
        if version > FORMAT_VERSION or version < 1:
            raise ValueError(
                f"{where}: version={version} is not supported (this reader knows 1..{FORMAT_VERSION}); "
                "rebuild the shards with this luma-pl or upgrade luma-pl"
            )
        shards = [ShardInfo(**s) for s in obj["shards"]]
        return cls(shards=shards, spaces={k: int(v) for k, v in obj.get("spaces", {}).items()},
                   media=list(obj.get("media", [])), version=version)


def write_manifest(manifest: Manifest, folder: str | os.PathLike) -> Path:
    """Write ``manifest.json`` atomically (tmp + rename) so a reader never sees half a file."""
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=1))
    os.replace(tmp, path)
    return path


def list_shards(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Shard files in ``folder`` matching ``<name>-NNNNNN.tar`` (any name if None), sorted."""
    out = []
    for p in sorted(Path(folder).iterdir()):
        m = SHARD_RE.match(p.name)
        if m and (name is None or m.group("name") == name):
            out.append(p)
    return out


def load_manifest(folder: str | os.PathLike, scan_if_missing: bool = True) -> Manifest:
    """Read ``manifest.json`` in ``folder``; without one, build it by scanning the tar headers."""
    path = Path(folder) / MANIFEST_NAME
    if path.exists():
        return Manifest.from_json(json.loads(path.read_text()), where=str(path))
    if not scan_if_missing:
        raise FileNotFoundError(f"{path} does not exist; write it with build_shards or pass scan_if_missing=True")
    return scan_manifest(list_shards(folder), root=folder)


def scan_manifest(shards: list[Path], root: str | os.PathLike | None = None) -> Manifest:
    """Build a manifest from tar headers: events = block rows (from ``ts.npy``'s header) + event samples.

    Only headers and tiny entries are read: for a block, the ``.npy`` header gives rows and dims.
    A shard that cannot be scanned (truncated, garbage) is recorded with the events seen so far.
    """
    import numpy as np

    infos: list[ShardInfo] = []
    spaces: dict[str, int] = {}
    media: set[str] = set()
    for shard in shards:
        keys_seen: set[str] = set()
        events = samples = 0
        block_keys: set[str] = set()
        try:
            from .shard_reader import check_member_extent

            size = Path(shard).stat().st_size
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    check_member_extent(member, size)  # a forged size would make tarfile spin
                    if not member.isreg():
                        continue
                    key, ext = split_member_name(member.name)
                    if key not in keys_seen:
                        keys_seen.add(key)
                        samples += 1
                    sp = space_of(ext)
                    if ext == "ts.npy" or sp is not None:
                        f = tar.extractfile(member)
                        shape = _npy_shape(np, f)  # header only, the array is not read
                        if ext == "ts.npy":
                            block_keys.add(key)
                            events += int(shape[0])
                        elif sp is not None:
                            spaces.setdefault(sp, int(shape[-1]))
                    elif ext in MEDIA_EXTS:
                        media.add(ext)
                    elif ext == BLOCK_MARKER:
                        f = tar.extractfile(member)
                        for text_ext in json.loads(f.read().decode("utf-8")).get("text", {}):
                            media.add(text_ext)
                    tar.members = []  # streaming: do not keep every TarInfo in memory
        except Exception:  # noqa: BLE001 - any parse failure (numpy header eval raises SyntaxError too)
            pass  # the replay will count the corruption when it reads the shard
        events += samples - len(block_keys)
        rel = os.path.relpath(shard, root) if root is not None else str(shard)
        infos.append(ShardInfo(name=rel, events=events, samples=samples, bytes=Path(shard).stat().st_size))
    return Manifest(shards=infos, spaces=spaces, media=sorted(media))


def _npy_shape(np, fileobj) -> tuple[int, ...]:
    """Shape from a ``.npy`` header (public numpy API; reads ~128 bytes)."""
    major, _ = np.lib.format.read_magic(fileobj)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, _ = read(fileobj)
    return tuple(int(x) for x in shape)
