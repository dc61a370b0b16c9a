"""Safe shard reading: explicit decoding per extension, corruption counted, never fatal.

Why not ``webdataset``'s ``.decode()``: its default decoders unpickle ``.pyd`` entries, so a shard
from an untrusted source could run code. Here every extension has one explicit decoder
(``np.load(allow_pickle=False)``, ``json``, utf-8, ``luma_pl.media``) and pickle-based entries
(``pyd``, ``pickle``, ``pkl``, ``pth``) make the whole sample corrupt: counted, never opened.

Tar iteration uses the standard library's streaming ``tarfile`` (the same primitive webdataset's
``tar_file_iterator`` wraps), plus two checks tarfile does not make: member names must be relative
without ``..``, and a shard must end with the tar end-of-archive marker (tarfile stops silently at
a garbage or truncated header after the first member; we count that as a truncated shard).

Output is columnar ``EventChunk``s (many events at once) so the replay slices batches with numpy
instead of collating per-event dicts.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from luma_pl.configuration import StrictConfig, require

from .shard_format import (
    AUDIO_EXTS,
    BLOCK_MARKER,
    IMAGE_EXTS,
    REFUSED_EXTS,
    split_member_name,
)


@dataclass
class ReaderConfig(StrictConfig):
    """How shards are decoded."""

    max_member_bytes: int = 1 << 30
    """Largest declared tar member size accepted; a bigger one makes its sample corrupt (not read)."""
    decode_media: bool = True
    """Decode ``jpg``/``png``/``flac``/``wav`` through ``luma_pl.media``; False keeps raw bytes."""
    chunk_events: int = 256
    """Event samples are gathered into columnar chunks of this many rows (blocks stay whole)."""
    audio_sample_rate: int = 48000
    """Decoded audio is resampled to this rate in Hz (48 kHz: what CLAP expects)."""

    def validate(self) -> None:
        require(self.max_member_bytes > 0, "ReaderConfig", "max_member_bytes", self.max_member_bytes,
                "use a positive byte count, e.g. 1 << 30")
        require(self.audio_sample_rate > 0, "ReaderConfig", "audio_sample_rate", self.audio_sample_rate,
                "use a positive rate in Hz, e.g. 48000")
        require(self.chunk_events > 0, "ReaderConfig", "chunk_events", self.chunk_events,
                "use a positive row count, e.g. 256")


@dataclass
class Skip:
    """One corrupt sample or shard that was skipped."""

    shard: str
    key: str
    reason: str


class CorruptSample(ValueError):
    """A sample that cannot be used; the reason is the message."""


@dataclass
class EventChunk:
    """``n`` events in columnar form (the unit the replay slices batches from)."""

    keys: list[str]
    ts: np.ndarray  # (n,) int64
    topics: list[str]
    emb: dict[str, np.ndarray]  # space -> (n, d) float32, zero rows where has is False
    has: dict[str, np.ndarray]  # space -> (n,) bool
    media: dict[str, list] = field(default_factory=dict)  # ext -> n payloads (None where absent)

    def __len__(self) -> int:
        return len(self.keys)


# --- tar level --------------------------------------------------------------------------------
def check_member_extent(member: tarfile.TarInfo, file_size: int) -> None:
    """Raise ``tarfile.ReadError`` when a member's declared data runs past the end of the file.

    Streaming tarfile skips a member's data by reading it block by block, also past the end of the
    file: a forged header declaring e.g. 2**40 bytes would spin for hours. Such a member can only
    come from a truncated or forged shard, so the shard ends there (counted)."""
    if member.offset_data + member.size > file_size:
        raise tarfile.ReadError(f"member {member.name!r} declares {member.size} bytes at offset "
                                f"{member.offset_data}, past the end of the file ({file_size} bytes)")


def _unsafe_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return not name or name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def iter_raw_samples(path: str, cfg: ReaderConfig, on_skip: Callable[[Skip], None]) -> Iterator[dict]:
    """Yield ``{'__key__': key, ext: bytes, ...}`` per sample (consecutive members with one key).

    A bad member (unsafe name, refused extension, absurd size, link) makes its sample corrupt: the
    sample is reported through ``on_skip`` and not yielded. A read error ends the shard: the sample
    in flight is reported with the reason, earlier samples were already yielded.
    """
    current: dict | None = None
    bad_reason: str | None = None

    def flush():
        if current is None:
            return None
        if bad_reason is not None:
            on_skip(Skip(path, current["__key__"], bad_reason))
            return None
        return current

    try:
        with open(path, "rb") as fh:
            file_size = os.fstat(fh.fileno()).st_size
            tar = tarfile.open(fileobj=fh, mode="r|")
            for member in tar:
                key, ext = split_member_name(member.name)
                if current is None or key != current["__key__"]:
                    done = flush()
                    if done is not None:
                        yield done
                    current, bad_reason = {"__key__": key}, None
                check_member_extent(member, file_size)
                if member.isdir():
                    continue
                if _unsafe_name(member.name):
                    bad_reason = bad_reason or f"unsafe member name {member.name!r} (absolute or '..')"
                elif not member.isreg():
                    bad_reason = bad_reason or f"member {member.name!r} is a link/device, not a regular file"
                elif ext in REFUSED_EXTS:
                    bad_reason = bad_reason or f"refused pickle-based entry {member.name!r} (never unpickled)"
                elif member.size > cfg.max_member_bytes:
                    bad_reason = bad_reason or (
                        f"member {member.name!r} declares {member.size} bytes > max_member_bytes="
                        f"{cfg.max_member_bytes}")
                elif ext in current:
                    bad_reason = bad_reason or (
                        f"duplicate entry {member.name!r} in one sample (two members with the same key and "
                        "extension; which one is meant is unknown)")
                elif bad_reason is None:
                    current[ext] = tar.extractfile(member).read()
                tar.members = []  # streaming: do not keep every TarInfo
            end = tar.offset
            done = flush()
            current = None
            if done is not None:
                yield done
            # tarfile ends silently at a garbage/truncated header after the first member: check
            # that what follows the last member is the all-zero end-of-archive marker.
            fh.seek(end)
            tail = fh.read(1 << 16)
            if len(tail) < 1024 or tail.count(0) != len(tail):
                what = "no end-of-archive marker" if not tail.strip(b"\0") else "garbage after last member"
                on_skip(Skip(path, "", f"truncated shard: {what} at byte {end}"))
    except (tarfile.TarError, EOFError, OSError) as err:
        key = current["__key__"] if current is not None else ""
        on_skip(Skip(path, key, f"unreadable shard ({type(err).__name__}: {err})"))


# --- sample level -----------------------------------------------------------------------------
def _npy(data: bytes, what: str) -> np.ndarray:
    try:
        # the header's declared shape must match the bytes that follow: a forged header declaring a
        # huge shape would otherwise make numpy allocate it before noticing the data is short
        fh = io.BytesIO(data)
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
        if dtype.hasobject:
            raise CorruptSample(f"{what}: dtype {dtype} needs pickle (refused)")
        need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if need != len(data) - fh.tell():
            raise CorruptSample(f"{what}: header declares shape {shape} ({need} bytes) but "
                                f"{len(data) - fh.tell()} bytes follow")
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except CorruptSample:
        raise
    except Exception as err:  # noqa: BLE001 - any parse failure is a corrupt entry
        raise CorruptSample(f"{what}: bad .npy ({err})") from err
    if arr.dtype.kind not in "fiub":
        raise CorruptSample(f"{what}: dtype {arr.dtype} is not numeric")
    return arr


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorruptSample(f"{what}: not utf-8 ({err})") from err


def _media(ext: str, data: bytes, key: str, cfg: ReaderConfig):
    if ext.endswith("txt"):
        return _text(data, f"{key}.{ext}")
    if not cfg.decode_media:
        return data
    from luma_pl.media import MediaError, load_audio, load_image

    try:
        if ext in IMAGE_EXTS:
            return load_image(data, name=f"{key}.{ext}")
        if ext in AUDIO_EXTS:
            wave = load_audio(data, cfg.audio_sample_rate, mono=True, name=f"{key}.{ext}")  # (T,)
            return np.asarray(wave, dtype=np.float32), cfg.audio_sample_rate
    except MediaError as err:
        raise CorruptSample(f"{key}.{ext}: {err}") from err
    return data


def decode_sample(raw: dict, spaces: dict[str, int], media: list[str], cfg: ReaderConfig) -> EventChunk:
    """One raw sample -> an ``EventChunk`` (n=1 for an event sample, n rows for a block).

    ``spaces`` (name -> d) and ``media`` (extensions) come from the manifest, so every chunk has
    the same columns; entries outside them are ignored. Raises ``CorruptSample``.
    """
    key = raw["__key__"]
    if BLOCK_MARKER in raw:
        return _decode_block(raw, spaces, media)
    if "ts" not in raw:
        raise CorruptSample(f"{key}: event sample has no 'ts' entry")
    try:
        ts = int(_text(raw["ts"], f"{key}.ts").strip())
    except ValueError as err:
        raise CorruptSample(f"{key}.ts: not an integer ({err})") from err
    topic = _text(raw["topic"], f"{key}.topic").strip() if "topic" in raw else ""
    emb, has = {}, {}
    for space, d in spaces.items():
        row = np.zeros((1, d), np.float32)
        present = f"{space}.npy" in raw
        if present:
            vec = _npy(raw[f"{space}.npy"], f"{key}.{space}.npy").reshape(-1)
            if vec.shape[0] != d:
                raise CorruptSample(f"{key}.{space}.npy: shape {vec.shape} but the manifest says d={d}")
            row[0] = vec
        emb[space], has[space] = row, np.array([present])
    payloads = {ext: [_media(ext, raw[ext], key, cfg) if ext in raw else None] for ext in media}
    return EventChunk([key], np.array([ts], np.int64), [topic], emb, has, payloads)


def _decode_block(raw: dict, spaces: dict[str, int], media: list[str]) -> EventChunk:
    key = raw["__key__"]
    try:
        meta = json.loads(_text(raw[BLOCK_MARKER], f"{key}.{BLOCK_MARKER}"))
    except json.JSONDecodeError as err:
        raise CorruptSample(f"{key}.{BLOCK_MARKER}: bad json ({err})") from err
    if "ts.npy" not in raw:
        raise CorruptSample(f"{key}: block has no ts.npy")
    ts = _npy(raw["ts.npy"], f"{key}.ts.npy").astype(np.int64).reshape(-1)
    n = ts.shape[0]
    keys = [str(k) for k in meta.get("keys", [])]
    topics = [str(t) for t in meta.get("topics", [""] * n)]
    if len(keys) != n or len(topics) != n:
        raise CorruptSample(f"{key}: block has {n} ts rows but {len(keys)} keys and {len(topics)} topics")
    emb, has = {}, {}
    for space, d in spaces.items():
        entry = f"{space}.npy"
        if entry in raw:
            arr = _npy(raw[entry], f"{key}.{entry}")
            if arr.shape != (n, d):
                raise CorruptSample(f"{key}.{entry}: shape {arr.shape}, expected ({n}, {d})")
            emb[space] = arr.astype(np.float32, copy=False)
            has[space] = np.ones(n, bool)
        else:
            emb[space], has[space] = np.zeros((n, d), np.float32), np.zeros(n, bool)
    texts = meta.get("text", {})
    payloads = {}
    for ext in media:
        col = texts.get(ext)
        if col is not None and len(col) != n:
            raise CorruptSample(f"{key}: text column {ext!r} has {len(col)} rows, expected {n}")
        payloads[ext] = list(col) if col is not None else [None] * n
    return EventChunk(keys, ts, topics, emb, has, payloads)


def concat_chunks(chunks: list[EventChunk]) -> EventChunk:
    """Stack chunks row-wise (same columns)."""
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    return EventChunk(
        keys=[k for c in chunks for k in c.keys],
        ts=np.concatenate([c.ts for c in chunks]),
        topics=[t for c in chunks for t in c.topics],
        emb={s: np.concatenate([c.emb[s] for c in chunks]) for s in first.emb},
        has={s: np.concatenate([c.has[s] for c in chunks]) for s in first.has},
        media={e: [x for c in chunks for x in c.media[e]] for e in first.media},
    )


def mask_bad_rows(chunk: EventChunk) -> tuple[int, str]:
    """Mark embedding rows with NaN/inf values or all zeros as absent (``has`` False, row zeroed).

    Such a row cannot be normalised or stored (the memory refuses it), so the event keeps its other
    payloads and loses only that embedding. Returns (rows masked, first key affected).
    """
    masked, first = 0, ""
    for space, arr in chunk.emb.items():
        has = chunk.has[space]
        bad = has & ~(np.isfinite(arr).all(axis=1) & (arr != 0).any(axis=1))
        if bad.any():
            if not masked:
                first = chunk.keys[int(np.flatnonzero(bad)[0])]
            masked += int(bad.sum())
            if not arr.flags.writeable:
                chunk.emb[space] = arr = arr.copy()
            arr[bad] = 0.0
            chunk.has[space] = has & ~bad
    return masked, first


def iter_chunks(path: str, spaces: dict[str, int], media: list[str], cfg: ReaderConfig,
                on_skip: Callable[[Skip], None]) -> Iterator[EventChunk]:
    """Columnar chunks of one shard in stream order; corrupt samples go to ``on_skip``; a sample with
    NaN/inf or all-zero embedding rows is replayed with those rows absent and counted once."""
    pending: list[EventChunk] = []  # event samples waiting to fill a chunk
    for raw in iter_raw_samples(path, cfg, on_skip):
        try:
            chunk = decode_sample(raw, spaces, media, cfg)
        except CorruptSample as err:
            on_skip(Skip(path, raw["__key__"], str(err)))
            continue
        masked, first = mask_bad_rows(chunk)
        if masked:
            on_skip(Skip(path, first, f"{masked} embedding row(s) with NaN/inf or all zeros in sample "
                                      f"{raw['__key__']!r}: replayed with has=False for those rows"))
        if len(chunk) == 1 and BLOCK_MARKER not in raw:
            pending.append(chunk)
            if len(pending) >= cfg.chunk_events:
                yield concat_chunks(pending)
                pending = []
            continue
        if pending:  # keep stream order: events before the block go first
            yield concat_chunks(pending)
            pending = []
        if len(chunk):
            yield chunk
    if pending:
        yield concat_chunks(pending)
