"""Standard WebDataset shards (img2dataset, open_clip, CLAP training sets) read with the webdataset library.

A sample is the group of tar members that share a key: ``000000001.jpg`` + ``000000001.txt`` +
``000000001.json`` (image-text, as img2dataset writes them) or ``.flac`` + ``.json`` (audio-text, as
CLAP's training sets). The ``webdataset`` library reads the tars and groups the members (any shard
naming, brace patterns ``data/{00000..00099}.tar``, local paths, ``pipe:`` commands and the URLs it
supports); this module decides what each entry means, at the boundary:

* webdataset's own decoders are never used (its default ``decode`` can unpickle ``.pyd``/``.pickle``):
  entries arrive as bytes and each extension has one explicit decoder here: images through
  ``luma_pl.media.load_image``, audio through ``load_audio``, text as UTF-8, ``.json`` as a JSON object
  (at most ``max_json_bytes``), ``.npy`` as a numeric array (``allow_pickle=False``, header checked).
* a sample holding a pickle-based entry (``REFUSED_EXTS``: pyd, pickle, pkl, pth) is refused whole
  and counted (``refused_entry``); its bytes are never decoded.
* every sample not yielded is counted with its reason (``WebDatasetSkips``): an entry that does not
  decode (``corrupt_sample``), JSON that is not an object or has a field of the wrong type
  (``bad_json``, ``bad_ts``), a member over ``max_member_bytes``, a sample with nothing this module
  reads (``no_content``), and a shard webdataset could not open or read (``unreadable_shard``,
  through its ``handler``), so a long build never crashes on one bad file and never drops one silently.
* ``ts``: the JSON field ``ts_field`` (an integer) when set, else the sample's position in the
  stream (shards in the order given, members in tar order); ``topic``: JSON field ``topic_field``;
  caption: the ``.txt`` entry, else JSON field ``caption_field``; the whole JSON object is ``meta``.

``build_shards webdataset`` turns such shards into the project's block shards (batched encoding);
``resolve_urls`` says which pattern matched nothing and what is there instead.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from luma_pl.configuration import StrictConfig, require

from .shard_format import REFUSED_EXTS
from .shard_reader import CorruptSample, decode_npy

WDS_SKIP_CODES = ("corrupt_sample", "bad_json", "bad_ts", "refused_entry", "oversize_member", "no_content",
                  "unreadable_shard")


@dataclasses.dataclass
class WebDatasetConfig(StrictConfig):
    """Where standard WebDataset shards are and which of their fields mean what."""

    urls: str = ""
    """Shards in webdataset's syntax: a brace pattern (``data/{00000..00009}.tar``), a list joined
    by ``::``, a ``pipe:`` command or a URL webdataset supports, or a local folder (every ``*.tar``
    in it, sorted by name)."""
    ts_field: str | None = None
    """JSON field holding each sample's integer ``ts``; None: the sample's position in the stream."""
    topic_field: str | None = None
    """JSON field holding each sample's topic (a string); None: no topic."""
    caption_field: str = "caption"
    """JSON field read as the caption when the sample has no ``.txt`` entry (CLAP-style ``.json``
    may hold a list of captions: the first is used, the rest are kept in ``meta``)."""
    image_exts: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
    """Entries decoded as the sample's image."""
    audio_exts: tuple[str, ...] = ("flac", "wav", "mp3")
    """Entries decoded as the sample's audio."""
    audio_sample_rate: int = 48000
    """Decoded audio is resampled to this rate in Hz (48 kHz: what CLAP expects)."""
    max_member_bytes: int = 64 << 20
    """Largest entry accepted; a sample with a bigger one is a counted ``oversize_member`` skip."""
    max_json_bytes: int = 1 << 20
    """Largest ``.json`` entry decoded; a bigger one is a counted ``bad_json`` skip."""

    def validate(self) -> None:
        n = "WebDatasetConfig"
        require(isinstance(self.urls, str) and self.urls.strip() != "", n, "urls", self.urls,
                "pass the shards, e.g. 'data/{00000..00009}.tar' or a folder of .tar files")
        require(self.max_member_bytes > 0 and self.max_json_bytes > 0, n, "max_member_bytes/max_json_bytes",
                (self.max_member_bytes, self.max_json_bytes), "use positive byte counts")
        require(self.audio_sample_rate > 0, n, "audio_sample_rate", self.audio_sample_rate, "use e.g. 48000")
        clash = set(self.image_exts) & set(self.audio_exts) | (set(self.image_exts) | set(self.audio_exts)) & REFUSED_EXTS
        require(not clash, n, "image_exts/audio_exts", sorted(clash),
                "an extension is decoded one way: image or audio, and never a pickle-based one")


@dataclasses.dataclass
class WebDatasetSample:
    """One decoded sample of a standard WebDataset shard."""

    key: str
    url: str
    ts: int
    topic: str
    caption: str | None
    image: object | None = None
    """PIL image (RGB) or None."""
    audio: np.ndarray | None = None
    """(T,) float32 mono at ``audio_sample_rate``, or None."""
    vectors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """``<name>.npy`` entries: name -> float32 array."""
    meta: dict = dataclasses.field(default_factory=dict)
    """The sample's ``.json`` object ({} without one)."""


class WebDatasetSkips:
    """Counts of skipped samples per reason code, with the first few examples of each."""

    def __init__(self, examples: int = 5) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._keep = examples

    def add(self, code: str, what: str) -> None:
        self.counts[code] += 1
        ex = self.examples.setdefault(code, [])
        if len(ex) < self._keep:
            ex.append(what[:300])

    def total(self) -> int:
        return int(sum(self.counts.values()))

    def report(self) -> dict:
        return {"total": self.total(), "by_reason": dict(self.counts), "examples": self.examples}


class SampleError(ValueError):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _is_local(spec: str) -> bool:
    return not spec.startswith(("pipe:", "http://", "https://", "gs://", "s3://", "hf://", "ais:"))


def resolve_urls(urls: str) -> list[str]:
    """The shard list webdataset will read, checked where it can be: a local folder becomes its
    ``*.tar`` files (sorted); a local brace pattern or path that names no existing file is an error
    that says which pattern and what the folder holds instead. Remote and ``pipe:`` specs are
    passed to webdataset as they are (it reports what it cannot open; each is counted)."""
    from braceexpand import braceexpand

    specs = [u for part in urls.split("::") for u in braceexpand(part.strip()) if u]
    out: list[str] = []
    for spec in specs:
        if not _is_local(spec):
            out.append(spec)
            continue
        path = Path(spec).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.glob("*.tar"))
            if not found:
                held = sorted(p.name for p in path.iterdir())[:10]
                raise FileNotFoundError(f"urls={urls!r}: folder {str(path)!r} holds no *.tar shards (it holds "
                                        f"{held or 'nothing'}); pass the folder of .tar files or a pattern "
                                        "like 'data/{00000..00009}.tar'")
            out += found
        elif any(c in spec for c in "*?["):
            found = sorted(glob.glob(str(path)))
            if not found:
                raise FileNotFoundError(f"urls={urls!r}: the glob {spec!r} matches no file")
            out += found
        else:
            out.append(str(path))
    missing = [u for u in out if _is_local(u) and not os.path.isfile(u)]
    if missing:
        parent = Path(missing[0]).parent
        held = sorted(p.name for p in parent.glob("*.tar"))[:10] if parent.is_dir() else []
        raise FileNotFoundError(
            f"urls={urls!r}: {len(missing)} of {len(out)} shard(s) do not exist, the first is {missing[0]!r}; "
            f"{str(parent)!r} holds {held or 'no .tar files'}; fix the pattern (brace ranges like "
            "{00000..00002} are inclusive) or pass the folder")
    if not out:
        raise FileNotFoundError(f"urls={urls!r} names no shard; pass e.g. 'data/{{00000..00009}}.tar' or a folder")
    return out


def _json(data: bytes, what: str, limit: int) -> dict:
    if len(data) > limit:
        raise SampleError(f"{what}: {len(data)} bytes > max_json_bytes={limit}", "bad_json")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise SampleError(f"{what}: not JSON ({type(err).__name__}: {str(err)[:200]})", "bad_json") from None
    if not isinstance(value, dict):
        raise SampleError(f"{what} is a JSON {type(value).__name__}, expected an object", "bad_json")
    return value


def decode_webdataset_sample(raw: dict, position: int, cfg: WebDatasetConfig) -> WebDatasetSample:
    """One raw webdataset sample (``__key__``, ``__url__``, ext -> bytes) -> ``WebDatasetSample``.
    Raises ``SampleError`` with a reason code from ``WDS_SKIP_CODES``."""
    from luma_pl.media import MediaError, load_audio, load_image

    key = str(raw.get("__key__", ""))
    entries = {k: v for k, v in raw.items() if not k.startswith("__")}
    refused = sorted(e for e in entries if e.split(".")[-1] in REFUSED_EXTS)
    if refused:
        raise SampleError(f"{key}: pickle-based entries {refused} refused (never decoded)", "refused_entry")
    big = [e for e, v in entries.items() if isinstance(v, (bytes, bytearray)) and len(v) > cfg.max_member_bytes]
    if big:
        raise SampleError(f"{key}.{big[0]}: {len(entries[big[0]])} bytes > max_member_bytes={cfg.max_member_bytes}",
                          "oversize_member")
    meta = _json(entries["json"], f"{key}.json", cfg.max_json_bytes) if "json" in entries else {}
    caption = None
    if "txt" in entries:
        try:
            caption = entries["txt"].decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise SampleError(f"{key}.txt: not utf-8 ({err})", "corrupt_sample") from None
    elif cfg.caption_field in meta:
        c = meta[cfg.caption_field]
        c = c[0] if isinstance(c, list) and c else c
        if not isinstance(c, str):
            raise SampleError(f"{key}.json: caption_field {cfg.caption_field!r} is a {type(c).__name__}, expected a "
                              "string or a list of strings", "bad_json")
        caption = c.strip()
    sample = WebDatasetSample(key=key, url=str(raw.get("__url__", "")), ts=int(position), topic="",
                              caption=caption or None, meta=meta)
    try:
        img = next((e for e in cfg.image_exts if e in entries), None)
        if img is not None:
            sample.image = load_image(entries[img], name=f"{key}.{img}")
        aud = next((e for e in cfg.audio_exts if e in entries), None)
        if aud is not None:
            sample.audio = np.asarray(load_audio(entries[aud], cfg.audio_sample_rate, mono=True, name=f"{key}.{aud}"),
                                      np.float32)
    except MediaError as err:
        raise SampleError(f"{key}: {err}", "corrupt_sample") from None
    for e, v in entries.items():
        if e.endswith(".npy") or e == "npy":
            try:
                vec = decode_npy(v, f"{key}.{e}").astype(np.float32)
            except CorruptSample as err:
                raise SampleError(str(err), "corrupt_sample") from None
            sample.vectors[e[: -len(".npy")] if e.endswith(".npy") else "npy"] = vec
    if sample.image is None and sample.audio is None and sample.caption is None and not sample.vectors:
        raise SampleError(f"{key}: no entry this reader uses (found {sorted(entries)}; images {list(cfg.image_exts)}, "
                          f"audio {list(cfg.audio_exts)}, txt, json field {cfg.caption_field!r}, npy)", "no_content")
    if cfg.ts_field is not None:
        v = meta.get(cfg.ts_field)
        if isinstance(v, bool) or not isinstance(v, int) or not -(1 << 63) <= v < (1 << 63):
            raise SampleError(f"{key}.json: ts_field {cfg.ts_field!r} is {v!r}, expected an int64 "
                              f"(fields found: {sorted(meta)[:20]})", "bad_ts")
        sample.ts = v
    if cfg.topic_field is not None and cfg.topic_field in meta:
        topic = meta[cfg.topic_field]
        if not isinstance(topic, str):
            raise SampleError(f"{key}.json: topic_field {cfg.topic_field!r} is a {type(topic).__name__}, expected a "
                              "string", "bad_json")
        sample.topic = topic
    return sample


def iter_webdataset(cfg: WebDatasetConfig, skips: WebDatasetSkips) -> Iterator[WebDatasetSample]:
    """Decoded samples of the shards in stream order (one process: no node or worker split); every
    sample not yielded is counted in ``skips``."""
    import webdataset as wds

    cfg.validate()
    urls = resolve_urls(cfg.urls)

    def handler(err: Exception) -> bool:  # webdataset calls this for a shard it cannot open or read
        skips.add("unreadable_shard", f"{type(err).__name__}: {err}")
        return True

    ds = wds.WebDataset(urls, handler=handler, shardshuffle=False, nodesplitter=None, workersplitter=None,
                        empty_check=False)
    position = 0
    for raw in ds:
        try:
            yield decode_webdataset_sample(raw, position, cfg)
        except SampleError as err:
            skips.add(err.code, str(err))
        position += 1


# --- direct replay: StreamReplayDataModule(webdataset=...) reads these shards as its stream ------
REPLAY_MEDIA = ("jpg", "flac", "txt")
"""Media keys of a replayed WebDataset batch: the decoded image (any image ext) under ``jpg``, the
audio ``(wave, sample_rate)`` under ``flac``, the caption under ``txt`` (what ``media_keys`` of the
bridge modules name to encode on the fly)."""

_SKIP_CODE = {"refused_entry": "bad_member", "oversize_member": "bad_member", "no_content": "corrupt_sample"}
"""WebDataset skip codes -> the replay's ``SKIP_CODES`` (the message keeps the detail)."""


def scan_webdataset_manifest(cfg: WebDatasetConfig):
    """A ``Manifest`` of local WebDataset shards: samples per shard counted from the tar headers
    (members grouped by key as webdataset groups them, consecutive members sharing a key), so the
    replay can plan equal batch counts per rank and resume exactly. Remote / ``pipe:`` shards
    cannot be planned without reading them: convert those with ``build_shards webdataset``."""
    import tarfile

    from .safe_tar import check_member_extent
    from .shard_format import Manifest, ShardInfo, split_member_name

    cfg.validate()
    urls = resolve_urls(cfg.urls)
    remote = [u for u in urls if not _is_local(u)]
    if remote:
        raise ValueError(f"webdataset.urls={cfg.urls!r}: {remote[0]!r} is not a local file; direct replay plans "
                         "batches from the shards' sample counts, so it needs local shards. Copy them, or convert "
                         "them with `python -m data_modules.build_shards webdataset`")
    shards = []
    for url in urls:
        size = os.path.getsize(url)
        samples, last = 0, None
        try:
            with tarfile.open(url, mode="r|") as tar:
                for member in tar:
                    tar.members = []
                    check_member_extent(member, size)
                    if not member.isreg() or "/__" in f"/{member.name}":
                        continue
                    key, _ = split_member_name(member.name)
                    if key != last:
                        samples, last = samples + 1, key
        except (tarfile.TarError, OSError, ValueError):
            pass  # counted as read so far; the replay reports the shard unreadable when it gets there
        shards.append(ShardInfo(name=os.path.abspath(url), events=samples, samples=samples, bytes=size))
    return Manifest(shards=shards, spaces={}, media=list(REPLAY_MEDIA))


def iter_webdataset_chunks(url: str, offset: int, cfg: WebDatasetConfig, chunk_events: int, on_skip):
    """One local WebDataset shard as the replay's ``EventChunk``s (``chunk_events`` rows each): media
    under ``REPLAY_MEDIA``; ts = the JSON field or ``offset`` + the sample's index in the shard (the
    shard's place in the stream, so every rank and worker agrees). Every sample not yielded goes to
    ``on_skip`` as a ``Skip`` of one event; a shard webdataset cannot read, as ``unreadable_shard``."""
    import webdataset as wds

    from .shard_reader import EventChunk, Skip, concat_chunks

    name = os.path.basename(url)

    def handler(err: Exception) -> bool:
        on_skip(Skip(name, "", f"unreadable shard ({type(err).__name__}: {str(err)[:300]})", "unreadable_shard", 0))
        return True

    ds = wds.WebDataset([url], handler=handler, shardshuffle=False, nodesplitter=None, workersplitter=None,
                        empty_check=False)
    pending = []
    for index, raw in enumerate(ds):
        try:
            s = decode_webdataset_sample(raw, offset + index, cfg)
        except SampleError as err:
            on_skip(Skip(name, str(raw.get("__key__", "")), str(err), _SKIP_CODE.get(err.code, err.code), 1))
            continue
        media = {"jpg": [s.image], "flac": [None if s.audio is None else (s.audio, cfg.audio_sample_rate)],
                 "txt": [s.caption]}
        pending.append(EventChunk([s.key], np.array([s.ts], np.int64), [s.topic], {}, {}, media))
        if len(pending) == chunk_events:
            yield concat_chunks(pending)
            pending = []
    if pending:
        yield concat_chunks(pending)
