"""The on-disk shard format: names, sample kinds, and the manifest.

Shards are WebDataset tar files named ``<name>-%06d.tar``. A tar member ``<key>.<ext>`` belongs
to sample ``<key>`` (everything before the first dot of the basename, as WebDataset splits it).

Two sample kinds live in the same shards:

* **event** sample: one event. Entries ``ts`` (decimal text), optional ``topic`` (text), raw media
  (``jpg``/``png``/``flac``/``wav``/``txt``/``query.txt``) and/or ``<space>.npy`` of shape ``(d,)``,
  optional ``relevant.json`` (a JSON list of event-key strings: the event is a labelled query whose
  relevant items are those events; an empty list is a labelled query with no relevant item).
* **block** sample: many events (e.g. 1024) of precomputed embeddings. Entries ``events.json``
  (``{"keys": [n], "topics": [n], "text": {ext: [n]}, "relevant": [n], "absent": {space: [rows]}}``;
  ``relevant`` optional, each entry ``null`` = not a labelled query or a list of event keys;
  ``absent`` optional, the rows that are events without that space: zero rows replayed with ``has``
  False, not counted as bad embeddings), ``ts.npy`` ``(n,)`` int64 and
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

from .safe_tar import check_member_extent, unsafe_name

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
RELEVANT_EXT = "relevant.json"
"""Optional entry of an event sample: a JSON list of the event keys relevant to it as a query."""
META_EXTS = frozenset({"ts", "topic", "events.json", "ts.npy", RELEVANT_EXT})
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
    def from_json(cls, obj, where: str = "manifest") -> Manifest:
        """Parse and validate a manifest's JSON value: every field has its type and range, shard
        names stay inside the manifest's folder. Raises ``ValueError`` naming the field and the value
        (a manifest is data from outside: valid JSON of the wrong type must not reach the replay)."""
        fix = "rebuild it with `python -m data_modules.build_shards` or delete it to scan the shards"
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: the manifest is a JSON {type(obj).__name__}, expected an object; {fix}")
        unknown = set(obj) - {"version", "spaces", "media", "shards"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; {fix}")
        version = _json_int(obj.get("version", 0), f"{where}: version", fix)
        if version > FORMAT_VERSION or version < 1:
            raise ValueError(
                f"{where}: version={version} is not supported (this reader knows 1..{FORMAT_VERSION}); "
                "rebuild the shards with this luma-pl or upgrade luma-pl"
            )
        raw_shards = obj.get("shards")
        if not isinstance(raw_shards, list):
            raise ValueError(f"{where}: shards is {_short(raw_shards)}, expected a list of objects; {fix}")
        shards = [_shard_info(s, f"{where}: shards[{i}]", fix) for i, s in enumerate(raw_shards)]
        raw_spaces = obj.get("spaces", {})
        if not isinstance(raw_spaces, dict):
            raise ValueError(f"{where}: spaces is {_short(raw_spaces)}, expected an object name -> dim; {fix}")
        spaces = {}
        for name, d in raw_spaces.items():
            if not SPACE_RE.match(name):
                raise ValueError(f"{where}: space name {name!r} is not an identifier; {fix}")
            spaces[name] = _json_int(d, f"{where}: spaces[{name!r}]", fix, low=1, high=MAX_DIM)
        media = obj.get("media", [])
        if not isinstance(media, list) or not all(isinstance(m, str) and m in MEDIA_EXTS for m in media):
            raise ValueError(f"{where}: media is {_short(media)}, expected a list drawn from {sorted(MEDIA_EXTS)}; "
                             f"{fix}")
        return cls(shards=shards, spaces=spaces, media=list(media), version=version)


MAX_DIM = 1 << 16
"""Largest embedding dimension a manifest or an ``.npy`` header may declare (bounds allocations)."""
MAX_SHARD_EVENTS = 1 << 28
"""Most events one shard may list (268M; at 8 bytes each a 2 GiB shard of bare timestamps)."""
MIN_EVENT_BYTES = 8
"""No event takes fewer bytes in a shard (a block row holds at least its int64 ts), so a shard of
``s`` bytes holds at most ``s // 8`` events: a manifest claiming more is refused before planning."""


def _short(value) -> str:
    text = json.dumps(value)[:60] if not isinstance(value, (bytes, bytearray)) else repr(value)[:60]
    return f"{type(value).__name__} {text}"


def _json_int(value, what: str, fix: str, low: int = 0, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; a bool, float, string or null is refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} is {_short(value)}, expected an integer; {fix}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{what} = {value} is outside [{low}, {high if high is not None else 'inf'}]; {fix}")
    return value


def _shard_info(s, what: str, fix: str) -> ShardInfo:
    if not isinstance(s, dict):
        raise ValueError(f"{what} is {_short(s)}, expected an object with name/events; {fix}")
    unknown = set(s) - {"name", "events", "samples", "bytes"}
    if unknown or "name" not in s or "events" not in s:
        raise ValueError(f"{what} has fields {sorted(s)}; it needs name and events (samples, bytes optional); {fix}")
    name = s["name"]
    if not isinstance(name, str) or unsafe_name(name) or "\0" in name:
        raise ValueError(f"{what}.name is {_short(name)}: a shard name must be a relative path inside the "
                         f"manifest's folder (no '..', not absolute); {fix}")
    return ShardInfo(name=name, events=_json_int(s["events"], f"{what}.events", fix),
                     samples=_json_int(s.get("samples", 0), f"{what}.samples", fix),
                     bytes=_json_int(s.get("bytes", 0), f"{what}.bytes", fix))


def check_against_files(manifest: Manifest, folder: str | os.PathLike, where: str = "manifest") -> None:
    """Refuse a manifest whose event counts its shards could not hold, before anything is planned
    from them (a count of 9e11 would plan billions of batches): at most ``MAX_SHARD_EVENTS`` per
    shard, and ``events * MIN_EVENT_BYTES`` at most the shard's recorded ``bytes`` (or, with none
    recorded, its size on disk). A shard whose size differs from the record is not refused here:
    the reader reports it as stale when it opens it and counts what it replays against the
    manifest (a truncated shard still replays its intact prefix)."""
    fix = "rebuild manifest.json from the shards (data_modules.scan_manifest + write_manifest), or delete it"
    for info in manifest.shards:
        if info.events > MAX_SHARD_EVENTS:
            raise ValueError(f"{where}: shard {info.name!r} lists {info.events} events, above MAX_SHARD_EVENTS="
                             f"{MAX_SHARD_EVENTS}; {fix}")
        size = info.bytes
        if not size:
            try:
                size = (Path(folder) / info.name).stat().st_size
            except OSError:
                continue  # missing: the replay counts it as unreadable
        if info.events * MIN_EVENT_BYTES > size:
            raise ValueError(f"{where}: shard {info.name!r} lists {info.events} events but holds only {size} bytes "
                             f"(an event needs at least {MIN_EVENT_BYTES}); {fix}")


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
        try:
            obj = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{path}: not valid JSON ({type(err).__name__}: {err}); rebuild it or delete it to "
                             "scan the shards") from None
        manifest = Manifest.from_json(obj, where=str(path))
        check_against_files(manifest, folder, where=str(path))
        return manifest
    if not scan_if_missing:
        raise FileNotFoundError(f"{path} does not exist; write it with build_shards or pass scan_if_missing=True")
    shards = list_shards(folder)
    if not shards:
        tars = sorted(p.name for p in Path(folder).glob("*.tar"))
        held = sorted(p.name for p in Path(folder).iterdir())[:10]
        hint = (f"it holds {len(tars)} .tar file(s) not named like that (e.g. {tars[0]!r}): standard WebDataset "
                "shards (img2dataset / open_clip style) are converted with `python -m data_modules.build_shards "
                f"webdataset --src {str(folder)!r} --out <folder> --encoders ...`" if tars
                else f"it holds {held or 'nothing'}")
        raise FileNotFoundError(f"{folder}: no manifest.json and no shard named <name>-NNNNNN.tar (6 digits), so "
                                f"there is nothing to replay; {hint}")
    return scan_manifest(shards, root=folder)


def scan_manifest(shards: list[Path], root: str | os.PathLike | None = None) -> Manifest:
    """Build a manifest from tar headers: events = block rows (from ``ts.npy``'s header) + event samples.

    Only headers and tiny entries are read: for a block, the ``.npy`` header gives rows and dims.
    A shard that cannot be scanned (truncated, garbage) is recorded with the events seen so far.
    """
    infos: list[ShardInfo] = []
    spaces: dict[str, int] = {}
    media: set[str] = set()
    for shard in shards:
        keys_seen: set[str] = set()
        events = samples = 0
        block_keys: set[str] = set()
        try:
            size = Path(shard).stat().st_size
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    tar.members = []  # streaming: do not keep every TarInfo in memory
                    check_member_extent(member, size)  # a forged size would make tarfile spin
                    if not member.isreg():
                        continue
                    key, ext = split_member_name(member.name)
                    if key not in keys_seen:
                        keys_seen.add(key)
                        samples += 1
                    sp = space_of(ext)
                    if ext == "ts.npy" or sp is not None:
                        # header only, the array is not read; the shape it declares must fit the
                        # member's size, or a 100-byte entry could claim 9e11 rows
                        shape, dtype, header = npy_header(tar.extractfile(member))
                        if npy_nbytes(shape, dtype) != member.size - header or len(shape) not in (1, 2):
                            continue  # counted by the replay when it decodes the sample
                        if ext == "ts.npy":
                            block_keys.add(key)
                            events += int(shape[0])
                        elif sp is not None and 1 <= shape[-1] <= MAX_DIM:
                            spaces.setdefault(sp, int(shape[-1]))
                    elif ext in MEDIA_EXTS:
                        media.add(ext)
                    elif ext == BLOCK_MARKER:
                        try:
                            meta = json.loads(tar.extractfile(member).read().decode("utf-8"))
                        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                            meta = None  # the replay counts it; the scan goes on to the block's ts.npy
                        texts = meta.get("text") if isinstance(meta, dict) else None
                        if isinstance(texts, dict):
                            media.update(e for e in texts if e in TEXT_EXTS)
        except Exception:  # noqa: BLE001 - any parse failure (numpy header eval raises SyntaxError too)
            pass  # the replay will count the corruption when it reads the shard
        events += samples - len(block_keys)
        rel = os.path.relpath(shard, root) if root is not None else str(shard)
        infos.append(ShardInfo(name=rel, events=events, samples=samples, bytes=Path(shard).stat().st_size))
    return Manifest(shards=infos, spaces=spaces, media=sorted(media))


def npy_header(fileobj):
    """``(shape, dtype, header_bytes)`` of a ``.npy`` stream, reading only its header (public numpy
    API). The data is not read: compare ``npy_nbytes(shape, dtype)`` with what follows before
    allocating anything of that shape. Raises ``ValueError`` on a malformed header."""
    import numpy as np

    start = fileobj.tell()
    try:
        major, _ = np.lib.format.read_magic(fileobj)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fileobj)
    except (ValueError, SyntaxError, TypeError, OverflowError) as err:  # numpy parses the header as a literal
        raise ValueError(f"bad .npy header ({type(err).__name__}: {err})") from None
    return tuple(int(x) for x in shape), dtype, fileobj.tell() - start


def npy_nbytes(shape: tuple[int, ...], dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` holds (exact, in Python ints: no overflow)."""
    n = 1
    for x in shape:
        n *= int(x)
    return n * dtype.itemsize
