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
import logging
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from luma_pl.configuration import StrictConfig, require

from .safe_tar import check_member_extent, unsafe_name
from .shard_format import (
    AUDIO_EXTS,
    BLOCK_MARKER,
    IMAGE_EXTS,
    REFUSED_EXTS,
    RELEVANT_EXT,
    TEXT_EXTS,
    npy_header,
    npy_nbytes,
    split_member_name,
)

log = logging.getLogger("luma_pl.replay")


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
    min_norm: float = 1e-6
    """An embedding row whose L2 norm is below this is replayed as absent (``has`` False, counted):
    a zero or denormal row has no direction, and normalising it gives inf/NaN."""
    max_norm: float = 1e4
    """An embedding row whose L2 norm is above this is replayed as absent (counted): encoder outputs
    have norms of order 1-100, and one finite row of norm 3e38 overflows the memory and moves the
    Procrustes statistic by more than the whole stream."""
    max_relevant: int = 1024
    """Most relevant-item keys one labelled query event may list (``events.json`` ``relevant`` entry or
    ``<key>.relevant.json``); a sample with more is a counted ``bad_json`` skip (bounds the work and
    memory a hostile label costs)."""

    def validate(self) -> None:
        require(self.max_member_bytes > 0, "ReaderConfig", "max_member_bytes", self.max_member_bytes,
                "use a positive byte count, e.g. 1 << 30")
        require(self.audio_sample_rate > 0, "ReaderConfig", "audio_sample_rate", self.audio_sample_rate,
                "use a positive rate in Hz, e.g. 48000")
        require(self.chunk_events > 0, "ReaderConfig", "chunk_events", self.chunk_events,
                "use a positive row count, e.g. 256")
        require(0 <= self.min_norm < self.max_norm < float("inf"), "ReaderConfig", "min_norm/max_norm",
                (self.min_norm, self.max_norm), "use 0 <= min_norm < max_norm < inf, e.g. 1e-6 and 1e4")
        require(isinstance(self.max_relevant, int) and not isinstance(self.max_relevant, bool)
                and self.max_relevant >= 0, "ReaderConfig", "max_relevant", self.max_relevant,
                "use a non-negative int count of keys, e.g. 1024")


@dataclass
class Skip:
    """One corrupt sample, shard or embedding row that was skipped."""

    shard: str
    key: str
    reason: str
    code: str = "corrupt_sample"
    """Short reason class, the key of the per-reason counts (``replay/skipped/<code>``): one of
    ``SKIP_CODES``."""
    events: int = 1
    """Events this skip removes from the replay: 1 for a sample, 0 for a masked embedding row (the
    event is replayed without it) or a shard-level note (its lost events are counted when the shard
    is reconciled with the manifest)."""


SKIP_CODES = (
    "corrupt_sample",  # a sample whose entries cannot be decoded (bad utf-8, bad .npy, missing ts, ...)
    "bad_json",  # events.json that is not JSON or not the documented object
    "bad_ts",  # a ts that is not an integer in int64 range
    "bad_member",  # unsafe name, link, refused pickle entry, oversize or duplicate member
    "bad_embedding",  # an embedding row with NaN/inf, zero/denormal or huge norm (row masked, event kept)
    "unreadable_shard",  # a shard that cannot be opened or read to its end
    "truncated_shard",  # a shard without its end-of-archive marker
    "stale_shard",  # a shard whose size differs from the manifest's record (changed since)
    "missing_events",  # a shard held fewer events than the manifest lists (replayed + skipped)
    "extra_events",  # shards held more events than the manifest lists: the surplus is not replayed
    "drop_last",  # a worker's final partial batch, dropped because drop_last is set
)


class CorruptSample(ValueError):
    """A sample that cannot be used; the reason is the message, ``code`` its class (``SKIP_CODES``)."""

    def __init__(self, message: str, code: str = "corrupt_sample"):
        super().__init__(message)
        self.code = code


@dataclass
class EventChunk:
    """``n`` events in columnar form (the unit the replay slices batches from)."""

    keys: list[str]
    ts: np.ndarray  # (n,) int64
    topics: list[str]
    emb: dict[str, np.ndarray]  # space -> (n, d) float32, zero rows where has is False
    has: dict[str, np.ndarray]  # space -> (n,) bool
    media: dict[str, list] = field(default_factory=dict)  # ext -> n payloads (None where absent)
    relevant: list | None = None
    """n entries: None (not a labelled query) or the list of relevant event keys (possibly empty);
    None for the whole field means all None (filled in by ``__post_init__``)."""

    def __post_init__(self) -> None:
        if self.relevant is None:
            self.relevant = [None] * len(self.keys)
        elif len(self.relevant) != len(self.keys):
            raise ValueError(f"EventChunk: relevant has {len(self.relevant)} entries but there are "
                             f"{len(self.keys)} keys; pass one entry (None or a list of keys) per event")

    def __len__(self) -> int:
        return len(self.keys)


# --- tar level --------------------------------------------------------------------------------
def iter_raw_samples(path: str, cfg: ReaderConfig, on_skip: Callable[[Skip], None], expect_bytes: int = 0
                     ) -> Iterator[dict]:
    """Yield ``{'__key__': key, ext: bytes, ...}`` per sample (consecutive members with one key).

    ``expect_bytes`` (the manifest's record, 0: unknown): a shard of another size is reported as
    stale (a note of 0 events; the replay reconciles its events with the manifest) and read as it is.

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
            on_skip(Skip(path, current["__key__"], bad_reason, "bad_member"))
            return None
        return current

    try:
        with open(path, "rb") as fh:
            file_size = os.fstat(fh.fileno()).st_size
            if expect_bytes and file_size != expect_bytes:
                # checked on the open file, so a shard replaced later is not mixed in: what it holds is
                # replayed and counted against the manifest's events (a truncated shard keeps its prefix)
                on_skip(Skip(path, "", f"stale shard: {file_size} bytes but the manifest records {expect_bytes} "
                                       "(changed or truncated after the manifest was written; its events are "
                                       "reconciled with the manifest's count; rebuild the manifest)",
                             "stale_shard", 0))
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
                if unsafe_name(member.name):
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
                on_skip(Skip(path, "", f"truncated shard: {what} at byte {end}", "truncated_shard", 0))
    except (tarfile.TarError, EOFError, OSError) as err:
        key = current["__key__"] if current is not None else ""
        # the sample in flight is lost (1 event); the rest of the shard is counted against the manifest
        on_skip(Skip(path, key, f"unreadable shard ({type(err).__name__}: {err})", "unreadable_shard",
                     int(current is not None)))


# --- sample level -----------------------------------------------------------------------------
def decode_npy(data: bytes, what: str) -> np.ndarray:
    """(Public: the WebDataset source decodes its ``.npy`` entries with it too.) A numeric array from ``.npy`` bytes. The header's declared shape must match the bytes that
    follow: a forged header declaring a huge shape would otherwise make numpy allocate it first."""
    fh = io.BytesIO(data)
    try:
        shape, dtype, header = npy_header(fh)
    except ValueError as err:
        raise CorruptSample(f"{what}: {err}") from None
    if dtype.hasobject:
        raise CorruptSample(f"{what}: dtype {dtype} needs pickle (refused)")
    if dtype.kind not in "fiub":
        raise CorruptSample(f"{what}: dtype {dtype} is not numeric")
    need = npy_nbytes(shape, dtype)
    if need != len(data) - header:
        raise CorruptSample(f"{what}: header declares shape {shape} ({need} bytes) but {len(data) - header} "
                            "bytes follow")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any parse failure is a corrupt entry
        raise CorruptSample(f"{what}: bad .npy ({err})") from err


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
        return _decode_block(raw, spaces, media, cfg)
    if "ts" not in raw:
        raise CorruptSample(f"{key}: event sample has no 'ts' entry")
    try:
        ts = int(_text(raw["ts"], f"{key}.ts").strip())
    except ValueError as err:
        raise CorruptSample(f"{key}.ts: not an integer ({err})", "bad_ts") from err
    if not INT64_MIN <= ts <= INT64_MAX:
        raise CorruptSample(f"{key}.ts: {ts} is outside the int64 range", "bad_ts")
    topic = _text(raw["topic"], f"{key}.topic").strip() if "topic" in raw else ""
    emb, has = {}, {}
    for space, d in spaces.items():
        row = np.zeros((1, d), np.float32)
        present = f"{space}.npy" in raw
        if present:
            vec = decode_npy(raw[f"{space}.npy"], f"{key}.{space}.npy").reshape(-1)
            if vec.shape[0] != d:
                raise CorruptSample(f"{key}.{space}.npy: shape {vec.shape} but the manifest says d={d}")
            row[0] = vec
        emb[space], has[space] = row, np.array([present])
    payloads = {ext: [_media(ext, raw[ext], key, cfg) if ext in raw else None] for ext in media}
    relevant = None
    if RELEVANT_EXT in raw:
        what = f"{key}.{RELEVANT_EXT}"
        try:
            value = json.loads(_text(raw[RELEVANT_EXT], what))
        except (json.JSONDecodeError, RecursionError) as err:
            raise CorruptSample(f"{what}: bad json ({type(err).__name__}: {str(err)[:200]})", "bad_json") from None
        except CorruptSample as err:
            raise CorruptSample(str(err), "bad_json") from None
        relevant = [_relevant_keys(value, what, cfg.max_relevant)]
    return EventChunk([key], np.array([ts], np.int64), [topic], emb, has, payloads, relevant)


def _relevant_keys(value, what: str, max_relevant: int) -> list[str]:
    """One query's relevance label: a JSON list of at most ``max_relevant`` event-key strings."""
    if not isinstance(value, list):
        raise CorruptSample(f"{what} is a JSON {type(value).__name__}, expected a list of event-key strings",
                            "bad_json")
    if len(value) > max_relevant:
        raise CorruptSample(f"{what} lists {len(value)} relevant keys > ReaderConfig.max_relevant={max_relevant}",
                            "bad_json")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise CorruptSample(f"{what}[{i}] is a JSON {type(v).__name__}, expected an event-key string", "bad_json")
    return list(value)


def _block_relevant(value, n: int, what: str, max_relevant: int) -> list:
    """A block's ``relevant`` field: n entries, each null or a list of event-key strings."""
    if not isinstance(value, list):
        raise CorruptSample(f"{what} is a JSON {type(value).__name__}, expected a list of {n} entries "
                            "(null or a list of event keys)", "bad_json")
    if len(value) != n:
        raise CorruptSample(f"{what} has {len(value)} entries but the block has {n} ts rows", "bad_json")
    return [None if v is None else _relevant_keys(v, f"{what}[{i}]", max_relevant) for i, v in enumerate(value)]


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _block_ts(data: bytes, what: str) -> np.ndarray:
    """A block's ``ts.npy`` as int64: integers in range, or floats that are finite whole numbers in
    range (NaN or 1e300 cast to int64 would silently become INT64_MIN)."""
    arr = decode_npy(data, what)
    if arr.ndim != 1:
        raise CorruptSample(f"{what}: shape {arr.shape}, expected (n,)", "bad_ts")
    if arr.dtype.kind == "f":
        x = arr.astype(np.float64)
        ok = np.isfinite(x) & (x == np.floor(x)) & (x >= -(2.0 ** 63)) & (x < 2.0 ** 63)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise CorruptSample(f"{what}: row {i} is {x[i]!r}, not a whole number in the int64 range", "bad_ts")
    elif arr.dtype.kind == "u" and arr.size and int(arr.max()) > INT64_MAX:
        raise CorruptSample(f"{what}: {int(arr.max())} is above the int64 range", "bad_ts")
    return arr.astype(np.int64)


def _str_list(value, n: int, what: str, allow_none: bool = False, allow_int: bool = True) -> list:
    """``value`` as a list of ``n`` strings (ints, where allowed, become their decimal text; None
    where allowed)."""
    if not isinstance(value, list):
        raise CorruptSample(f"{what} is a {type(value).__name__}, expected a list of {n} strings", "bad_json")
    if len(value) != n:
        raise CorruptSample(f"{what} has {len(value)} entries but the block has {n} ts rows", "bad_json")
    for i, v in enumerate(value):
        if not (isinstance(v, str) or (allow_int and isinstance(v, int) and not isinstance(v, bool))
                or (allow_none and v is None)):
            raise CorruptSample(f"{what}[{i}] is a {type(v).__name__}, expected a string", "bad_json")
    return [v if v is None or isinstance(v, str) else str(v) for v in value]


def _decode_block(raw: dict, spaces: dict[str, int], media: list[str], cfg: ReaderConfig) -> EventChunk:
    """A block sample -> ``EventChunk``. ``events.json`` is data from outside: valid JSON of another
    type (a list, a number, null, deep nesting) is a counted ``bad_json`` skip, never an exception."""
    key = raw["__key__"]
    try:
        meta = json.loads(_text(raw[BLOCK_MARKER], f"{key}.{BLOCK_MARKER}"))
    except (json.JSONDecodeError, RecursionError) as err:
        raise CorruptSample(f"{key}.{BLOCK_MARKER}: bad json ({type(err).__name__}: {str(err)[:200]})",
                            "bad_json") from None
    if not isinstance(meta, dict):
        raise CorruptSample(f"{key}.{BLOCK_MARKER} is a JSON {type(meta).__name__}, expected an object "
                            '{"keys": [...], "topics": [...], "text": {...}}', "bad_json")
    if "ts.npy" not in raw:
        raise CorruptSample(f"{key}: block has no ts.npy")
    ts = _block_ts(raw["ts.npy"], f"{key}.ts.npy")
    n = ts.shape[0]
    keys = _str_list(meta.get("keys"), n, f"{key}.{BLOCK_MARKER}: keys")
    topics = _str_list(meta.get("topics", [""] * n), n, f"{key}.{BLOCK_MARKER}: topics")
    texts = meta.get("text", {})
    if not isinstance(texts, dict):
        raise CorruptSample(f"{key}.{BLOCK_MARKER}: text is a {type(texts).__name__}, expected an object "
                            "ext -> list", "bad_json")
    emb, has = {}, {}
    for space, d in spaces.items():
        entry = f"{space}.npy"
        if entry in raw:
            arr = decode_npy(raw[entry], f"{key}.{entry}")
            if arr.shape != (n, d):
                raise CorruptSample(f"{key}.{entry}: shape {arr.shape}, expected ({n}, {d})")
            emb[space] = arr.astype(np.float32, copy=False)
            has[space] = np.ones(n, bool)
        else:
            if n * d * 4 > cfg.max_member_bytes:  # an absent space costs zeros of (n, d): bound them
                raise CorruptSample(f"{key}: block of {n} rows without {entry} would need {n * d * 4} bytes of "
                                    f"zeros > max_member_bytes={cfg.max_member_bytes}")
            emb[space], has[space] = np.zeros((n, d), np.float32), np.zeros(n, bool)
    payloads = {}
    for ext in media:
        col = texts.get(ext)
        if ext not in TEXT_EXTS or col is None:
            payloads[ext] = [None] * n
        else:
            payloads[ext] = _str_list(col, n, f"{key}.{BLOCK_MARKER}: text[{ext!r}]", allow_none=True,
                                      allow_int=False)
    relevant = None
    if meta.get("relevant") is not None:
        relevant = _block_relevant(meta["relevant"], n, f"{key}.{BLOCK_MARKER}: relevant", cfg.max_relevant)
    for space, rows in _block_absent(meta.get("absent"), n, f"{key}.{BLOCK_MARKER}: absent").items():
        if space in emb:  # rows the writer marked as events without this space: absent, not bad
            emb[space] = emb[space].copy() if not emb[space].flags.writeable else emb[space]
            emb[space][rows] = 0.0
            has[space][rows] = False
    return EventChunk(keys, ts, topics, emb, has, payloads, relevant)


def _block_absent(value, n: int, what: str) -> dict[str, np.ndarray]:
    """A block's ``absent`` field: space -> row indices in [0, n) of events without that space."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CorruptSample(f"{what} is a JSON {type(value).__name__}, expected an object space -> row list",
                            "bad_json")
    out = {}
    for space, rows in value.items():
        if not isinstance(rows, list) or len(rows) > n or not all(
                isinstance(r, int) and not isinstance(r, bool) and 0 <= r < n for r in rows):
            raise CorruptSample(f"{what}[{space!r}] must be a list of at most {n} row indices in [0, {n})", "bad_json")
        out[space] = np.asarray(rows, np.int64)
    return out


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
        relevant=[r for c in chunks for r in c.relevant],
    )


def mask_bad_rows(chunk: EventChunk, min_norm: float = 1e-6, max_norm: float = 1e4) -> tuple[int, str]:
    """Mark embedding rows that are not finite or whose L2 norm is outside ``[min_norm, max_norm]``
    as absent (``has`` False, row zeroed).

    Such a row cannot be normalised or stored (the memory refuses it), or, finite but huge, would
    dominate every statistic it enters; the event keeps its other payloads and loses only that
    embedding. Norms are computed in float64 (a float32 row of norm 3e38 would overflow to inf).
    Returns (rows masked, first key affected).
    """
    masked, first = 0, ""
    for space, arr in chunk.emb.items():
        has = chunk.has[space]
        finite = np.isfinite(arr).all(axis=1)
        norm = np.sqrt(np.square(np.where(finite[:, None], arr, 0), dtype=np.float64).sum(axis=1))
        bad = has & ~(finite & (norm >= min_norm) & (norm <= max_norm) & (norm > 0))
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
                on_skip: Callable[[Skip], None], expect_bytes: int = 0) -> Iterator[EventChunk]:
    """Columnar chunks of one shard in stream order; corrupt samples go to ``on_skip``; a sample with
    non-finite or out-of-range embedding rows is replayed with those rows absent and counted once.
    ``expect_bytes``: the manifest's record of the shard's size (see ``iter_raw_samples``)."""
    pending: list[EventChunk] = []  # event samples waiting to fill a chunk
    for raw in iter_raw_samples(path, cfg, on_skip, expect_bytes):
        try:
            chunk = decode_sample(raw, spaces, media, cfg)
        except CorruptSample as err:
            on_skip(Skip(path, raw["__key__"], str(err), err.code))
            continue
        except Exception as err:  # noqa: BLE001 - a decoder bug met by hostile content must not end a long run
            log.exception("decoding sample %r of %s failed", raw["__key__"], path)
            on_skip(Skip(path, raw["__key__"], f"decoder error ({type(err).__name__}: {str(err)[:200]})"))
            continue
        masked, first = mask_bad_rows(chunk, cfg.min_norm, cfg.max_norm)
        if masked:
            on_skip(Skip(path, first, f"{masked} embedding row(s) with NaN/inf or a norm outside [{cfg.min_norm:g}, "
                                      f"{cfg.max_norm:g}] in sample {raw['__key__']!r}: replayed with has=False "
                                      "for those rows", "bad_embedding", 0))
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
