"""Standard retrieval test sets: media with several captions each, as the field publishes them.

Readers (each returns ``RetrievalSetItem``s: a key, the media file, its captions):

* ``karpathy``: COCO / Flickr30k Karpathy-split JSON (``{"images": [{"filename", "filepath"?,
  "split", "sentences": [{"raw"}]}]}``), one split (``test`` by default), 5 captions per image;
* ``clotho``: Clotho CSV (``file_name,caption_1..caption_5``);
* ``audiocaps``: AudioCaps CSV (``audiocap_id,youtube_id,start_time,caption``: one caption per row,
  several rows per clip; the clip file is ``<youtube_id>.<ext>`` or ``<youtube_id>_<start>.<ext>``);
* ``jsonl``: generic, one ``{"file": "...", "captions": ["...", ...]}`` per line.

Every malformed row is an error naming the file, the row and the field found; a listed media file
that does not exist is skipped and counted (test sets are often partially downloaded), never
silently dropped. ``write_retrieval_set`` encodes the media as **item events** (``<space>``) and every
caption as a **labelled query event** (``<space>_text``, ``relevant = [its item's key]``), so
``evaluate.py`` asks each caption against the stream (text -> media) and
``luma_pl.evaluation.retrieval_set`` scores both directions (media -> text as well) with
``luma_pl.metrics.cross_modal``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

FORMATS = ("karpathy", "clotho", "audiocaps", "jsonl")


@dataclasses.dataclass
class RetrievalSetItem:
    key: str
    path: Path
    captions: list[str]


def _captions(value, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c.strip() for c in value):
        raise ValueError(f"{where}: captions must be a non-empty list of non-empty strings, got {value!r:.120}")
    return [c.strip() for c in value]


def read_karpathy(path: Path, media_root: Path, split: str = "test") -> list[RetrievalSetItem]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError(f"{path}: not a Karpathy-split file (expected an object with an 'images' list, found "
                         f"{sorted(doc) if isinstance(doc, dict) else type(doc).__name__})")
    out = []
    for i, im in enumerate(doc["images"]):
        where = f"{path} images[{i}]"
        if not isinstance(im, dict) or not isinstance(im.get("filename"), str):
            raise ValueError(f"{where}: no 'filename' (fields found: {sorted(im) if isinstance(im, dict) else im!r})")
        if im.get("split") != split:
            continue
        sents = im.get("sentences")
        caps = _captions([s.get("raw") if isinstance(s, dict) else s for s in sents] if isinstance(sents, list)
                         else sents, where)
        rel = Path(im.get("filepath") or "") / im["filename"]
        out.append(RetrievalSetItem(key=Path(im["filename"]).stem, path=Path(media_root) / rel, captions=caps))
    return out


def read_clotho(path: Path, media_root: Path) -> list[RetrievalSetItem]:
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = [c for c in (reader.fieldnames or []) if c.startswith("caption")]
        if "file_name" not in (reader.fieldnames or []) or not cols:
            raise ValueError(f"{path}: a Clotho CSV has file_name,caption_1..caption_5; found {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            caps = _captions([row[c] for c in cols if row.get(c)], f"{path} line {n}")
            out.append(RetrievalSetItem(key=Path(row["file_name"]).stem, path=Path(media_root) / row["file_name"],
                                   captions=caps))
    return out


def read_audiocaps(path: Path, media_root: Path, ext: str = "wav") -> list[RetrievalSetItem]:
    by_clip: dict[str, RetrievalSetItem] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"youtube_id", "caption"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: an AudioCaps CSV has audiocap_id,youtube_id,start_time,caption; found "
                             f"{reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            yid = row["youtube_id"]
            cap = _captions([row["caption"]], f"{path} line {n}")[0]
            if yid not in by_clip:
                plain = Path(media_root) / f"{yid}.{ext}"
                start = row.get("start_time")
                timed = Path(media_root) / f"{yid}_{start}.{ext}"
                by_clip[yid] = RetrievalSetItem(key=yid, path=timed if start and timed.exists() else plain, captions=[])
            by_clip[yid].captions.append(cap)
    return list(by_clip.values())


def read_jsonl(path: Path, media_root: Path) -> list[RetrievalSetItem]:
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("file"), str):
            raise ValueError(f"{path} line {n}: expected {{\"file\": ..., \"captions\": [...]}}, found "
                             f"{sorted(row) if isinstance(row, dict) else type(row).__name__}")
        out.append(RetrievalSetItem(key=Path(row["file"]).stem, path=Path(media_root) / row["file"],
                               captions=_captions(row.get("captions"), f"{path} line {n}")))
    return out


def read_retrieval_set(fmt: str, path: Path, media_root: Path, split: str = "test") -> list[RetrievalSetItem]:
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: use one of {FORMATS}")
    items = {"karpathy": lambda: read_karpathy(path, media_root, split), "clotho": lambda: read_clotho(path, media_root),
             "audiocaps": lambda: read_audiocaps(path, media_root), "jsonl": lambda: read_jsonl(path, media_root)}[fmt]()
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"{path}: two media files share the key {dup!r} (the file stem); rename one")
    return items


def write_retrieval_set(items: list[RetrievalSetItem], encoders: list, out: Path, batch_size: int = 64,
                   events_per_shard: int = 8192) -> dict:
    """Encode (batched) and write: per media, one item event then its captions as labelled queries
    (keys ``<key>`` and ``<key>#c<i>``). Media files that are missing or do not decode are skipped
    and counted (with their captions). Returns the report."""
    from luma_pl.media import MediaError, load_audio, load_image

    from .shard_writer import ShardSetWriter

    skipped: dict[str, list[str]] = {"missing": [], "undecodable": []}
    written = {"items": 0, "captions": 0}
    rates = {e.sample_rate for e in encoders if "audio" in e.modalities and e.sample_rate}
    rate = rates.pop() if rates else 48000
    with ShardSetWriter(out, "testset", events_per_shard) as writer:
        for start in range(0, len(items), batch_size):
            media, ok = [], []
            for it in items[start:start + batch_size]:
                if not it.path.is_file():
                    skipped["missing"].append(str(it.path))
                    continue
                try:
                    ext = it.path.suffix[1:].lower()
                    if ext in ("jpg", "jpeg", "png", "webp"):
                        media.append(("image", load_image(it.path)))
                    else:
                        media.append(("audio", np.asarray(load_audio(it.path, rate, mono=True), np.float32)))
                    ok.append(it)
                except MediaError as err:
                    skipped["undecodable"].append(f"{it.path}: {err}")
            if not ok:
                continue
            rows_keys, rows_rel, emb, has = _encode_rows(encoders, ok, media)
            writer.write_block(keys=rows_keys, ts=np.arange(len(rows_keys)) + written["items"] + written["captions"],
                               emb=emb, has=has, relevant=rows_rel)
            written["items"] += len(ok)
            written["captions"] += sum(len(it.captions) for it in ok)
    manifest = writer.close()
    report = {**written, "events": manifest.total_events, "spaces": manifest.spaces,
              "skipped": {k: len(v) for k, v in skipped.items()},
              "skipped_examples": {k: v[:5] for k, v in skipped.items() if v}, "out": str(out)}
    if not written["items"]:
        raise SystemExit(f"test set: 0 media written ({report['skipped']} skipped, e.g. "
                         f"{report['skipped_examples']}); check --media-root")
    return report


def _encode_rows(encoders: list, items: list[RetrievalSetItem], media: list):
    """Rows of one block: each item's media row, then its caption rows (labelled queries), encoded
    by ``build_shards.encode_samples`` (one forward per tower; ``<space>`` / ``<space>_text``)."""
    from .build_shards import encode_samples
    from .webdataset_source import WebDatasetSample

    rows, relevant = [], []
    for it, (modality, value) in zip(items, media, strict=True):
        rows.append(WebDatasetSample(key=it.key, url="", ts=0, topic="", caption=None,
                                     image=value if modality == "image" else None,
                                     audio=value if modality == "audio" else None))
        relevant.append(None)
        for i, c in enumerate(it.captions):
            rows.append(WebDatasetSample(key=f"{it.key}#c{i}", url="", ts=0, topic="", caption=c))
            relevant.append([it.key])
    emb, has = encode_samples(encoders, rows)
    return [r.key for r in rows], relevant, emb, has
