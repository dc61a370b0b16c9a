"""Build shards: ``python -m data_modules.build_shards {demo,folder,webdataset} --help``.

``demo``: the docstring demo corpus (``luma_pl.corpus``) as block shards of precomputed
``minilm``/``wordllama`` embeddings (plus ``query_*`` and texts).
``folder``: a folder of media (images, audio, ``.txt`` captions) with an optional sidecar
(``captions.jsonl``: ``{"file": "a/b.jpg", "caption": "...", "ts": 17}`` per line, or ``captions.csv``
with columns ``file,caption[,ts]``), embedded by the chosen frozen encoders into per-event samples.
Entries: `<space>` = the image or audio by that encoder's own tower, `<space>_text` = the caption by its
text tower (the anchor pairs). Videos (mp4/webm/mkv/mov/avi): frames sampled at ``--video-fps``
through the image towers; the clip event holds the mean-pooled vector in ``<space>`` and each
frame follows as its own event in ``<space>_frame``. Topic = first sub-folder; ts = sidecar value, else the rank in sorted
path order. A file that cannot be decoded is skipped, named and counted in the report.
``webdataset``: standard WebDataset shards (img2dataset / open_clip / CLAP style: ``00000.tar`` with
``<key>.jpg``/``.flac`` + ``.txt``/``.json``), read with the webdataset library
(``data_modules.webdataset_source``: safe decoders, pickle refused, every skip counted), encoded in
batches of ``--batch-size`` per forward pass (``--batch-size 1`` is one file per forward), written
as block shards (``<space>`` image/audio, ``<space>_text`` caption; a row without one is marked
absent). The report gives events, skips by reason, and encode items/s.
``retrieval``: a standard retrieval test set (COCO / Flickr30k Karpathy JSON, Clotho / AudioCaps CSV,
generic JSONL) as item events plus every caption as a labelled query (``data_modules.retrieval_sets``).
``arrays``: embeddings users already have (an ``.npz`` or a folder of ``.npy``: one ``(n, d)`` array
per space, optional ``keys``/``ts``/``topics`` and ``has_<space>`` masks) as block shards.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from luma_pl.media import MediaError
from luma_pl.threads import limit_cpu_threads

from .shard_format import AUDIO_EXTS, IMAGE_EXTS, VIDEO_EXTS
from .shard_writer import ShardSetWriter, write_blocks

SIDECARS = ("captions.jsonl", "captions.csv")


def build_demo(args: argparse.Namespace) -> dict:
    from luma_pl.corpus import DemoCorpusConfig, DocstringCorpusConfig, build_demo_corpus, event_arrays

    cfg = DemoCorpusConfig(corpus=DocstringCorpusConfig(packages=tuple(args.packages), max_items=args.max_items),
                           cache_dir=args.cache_dir, device=args.device)
    corpus = build_demo_corpus(cfg)
    ev = event_arrays(corpus)
    t0 = time.perf_counter()
    manifest = write_blocks(args.out, keys=ev["keys"], ts=ev["ts"], emb=ev["emb"], topics=ev["topics"],
                            texts=ev["texts"], name=args.name, block_events=args.block_events,
                            events_per_shard=args.events_per_shard)
    report = dict(corpus.report, shards=len(manifest.shards), write_s=round(time.perf_counter() - t0, 3),
                  out=str(args.out))
    (Path(args.out) / "corpus_report.json").write_text(json.dumps(report, indent=1))
    return report


def read_sidecar(src: Path) -> dict[str, dict]:
    """``relative path -> {'caption': str, 'ts': int|None}`` from captions.jsonl / captions.csv."""
    out: dict[str, dict] = {}
    if (src / "captions.jsonl").exists():
        for n, line in enumerate((src / "captions.jsonl").read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "file" not in row:
                raise ValueError(f"{src / 'captions.jsonl'} line {n}: no 'file' field; write "
                                 '{"file": "path/in/folder", "caption": "..."}')
            out[row["file"]] = {"caption": row.get("caption"), "ts": row.get("ts")}
    elif (src / "captions.csv").exists():
        with open(src / "captions.csv", newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                out[row["file"]] = {"caption": row.get("caption"), "ts": int(row["ts"]) if row.get("ts") else None}
    return out


def build_folder(args: argparse.Namespace) -> dict:

    src = Path(args.src)
    if not src.is_dir():
        raise SystemExit(f"--src {src} is not a folder; pass the folder of media to shard")
    side = read_sidecar(src)
    exts = IMAGE_EXTS | AUDIO_EXTS | VIDEO_EXTS | {"txt"}
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix[1:].lower() in exts
                   and p.name not in SIDECARS)
    # a .txt beside a media file with the same stem is that file's caption, not an event
    media_stems = {p.with_suffix("") for p in files if p.suffix[1:].lower() != "txt"}
    files = [p for p in files if not (p.suffix == ".txt" and p.with_suffix("") in media_stems)]
    encoders = _encoders(args)
    batch_size = int(getattr(args, "batch_size", 64))
    if batch_size < 1:
        raise SystemExit(f"--batch-size {batch_size} must be >= 1 (1 = one file per forward pass)")
    t0 = time.perf_counter()
    skipped: list[dict] = []  # files that could not be decoded: counted and named, never silent
    pending: list[dict] = []  # decoded files waiting for one batched forward pass per tower
    forwards = 0
    with ShardSetWriter(args.out, args.name, args.events_per_shard) as writer:
        def flush() -> None:
            nonlocal forwards
            if pending:
                forwards += 1
                for event, emb in zip(pending, _embed_batch(encoders, pending), strict=True):
                    writer.write_event(ts=event["ts"], key=event["key"], topic=event["topic"], emb=emb,
                                       media=event["media"])
                pending.clear()

        for rank, path in enumerate(files):
            rel = path.relative_to(src).as_posix()
            ext = path.suffix[1:].lower()
            meta = side.get(rel, {})
            caption = meta.get("caption")
            if caption is None and path.with_suffix(".txt").exists() and ext != "txt":
                caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
            if ext == "txt":
                caption = path.read_text(encoding="utf-8").strip()
            topic = rel.split("/")[0] if "/" in rel else ""
            ts = meta.get("ts")
            ts = int(ts) if ts is not None else rank
            if ext in VIDEO_EXTS:  # a video is its own batch of frames: written in place, in file order
                flush()
                try:
                    emb = _embed_batch(encoders, [{"caption": caption, "image": None, "audio": {}}])[0]
                    frames = _embed_frames(encoders, path, args.video_fps, args.video_max_frames)
                except MediaError as err:
                    skipped.append({"file": rel, "reason": str(err)})
                    print(f"skipped {rel}: {err}", file=sys.stderr)
                    continue
                # video bytes are not copied into the shard: its frames travel as embeddings
                writer.write_event(ts=ts, key=f"{rank:09d}", topic=topic, emb={**emb, **frames.pop("clip", {})},
                                   media={"txt": caption} if caption else {})
                # each sampled frame is an event of its own (same ts and topic), in <space>_frame
                for f, vecs in enumerate(frames.get("frames", [])):
                    writer.write_event(ts=ts, key=f"{rank:09d}_f{f:04d}", topic=topic, emb=vecs, media={})
                continue
            try:
                decoded = _decode_file(encoders, path, ext)
            except MediaError as err:
                skipped.append({"file": rel, "reason": str(err)})
                print(f"skipped {rel}: {err}", file=sys.stderr)
                continue
            media = {} if ext == "txt" else {("jpg" if ext == "jpeg" else ext): path.read_bytes()}
            if caption:
                media["txt"] = caption
            pending.append({**decoded, "caption": caption, "ts": ts, "key": f"{rank:09d}", "topic": topic,
                            "media": media})
            if len(pending) == batch_size:
                flush()
        flush()
    manifest = writer.close()
    return {"events": manifest.total_events, "shards": len(manifest.shards), "spaces": manifest.spaces,
            "media": manifest.media, "skipped": skipped, "batches": forwards, "batch_size": batch_size,
            "seconds": round(time.perf_counter() - t0, 3), "out": str(args.out)}


def _encoders(args: argparse.Namespace) -> list:
    """``--encoders``: kinds (``minilm``) or ``EncoderConfig`` JSON objects (clip / clap with a path
    or a ``model_cfg``)."""
    from luma_pl.encoders import EncoderConfig, build_encoder

    return [build_encoder(EncoderConfig.from_dict(json.loads(e)) if e.startswith("{")
                          else EncoderConfig(kind=e, device=args.device)) for e in args.encoders]


def encode_samples(encoders: list, samples: list) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One batch of decoded ``WebDatasetSample``s through every encoder, one forward pass per tower:
    ``<space>`` = the image or audio by that encoder's own tower, ``<space>_text`` = the caption by
    its text tower. Returns ``(emb space -> (n, d) float32, has space -> (n,) bool)``; rows without
    that input are zero and ``has`` False."""
    n = len(samples)
    emb: dict[str, np.ndarray] = {}
    has: dict[str, np.ndarray] = {}

    def put(space: str, dim: int, rows: list[int], vectors) -> None:
        if not rows:
            return
        emb.setdefault(space, np.zeros((n, dim), np.float32))[rows] = vectors.cpu().numpy()
        has.setdefault(space, np.zeros(n, bool))[rows] = True

    for enc in encoders:
        if "image" in enc.modalities:
            rows = [i for i, s in enumerate(samples) if s.image is not None]
            put(enc.space, enc.dim, rows, enc.encode_image([samples[i].image for i in rows], batch_size=max(1, n)))
        if "audio" in enc.modalities:
            rows = [i for i, s in enumerate(samples) if s.audio is not None]
            put(enc.space, enc.dim, rows, enc.encode_audio([samples[i].audio for i in rows], batch_size=max(1, n)))
        if "text" in enc.modalities:
            rows = [i for i, s in enumerate(samples) if s.caption]
            put(f"{enc.space}_text", enc.dim, rows,  # the encoder's own length-sorted chunks
                enc.encode_text([samples[i].caption for i in rows]))
    return emb, has


def build_webdataset(args: argparse.Namespace) -> dict:
    """Standard WebDataset shards -> block shards of precomputed embeddings (see the module doc)."""
    from tqdm import tqdm

    from .webdataset_source import WebDatasetConfig, WebDatasetSkips, iter_webdataset

    if args.batch_size < 1:
        raise SystemExit(f"--batch-size {args.batch_size} must be >= 1 (1 = one file per forward pass)")
    encoders = _encoders(args)
    rates = {e.sample_rate for e in encoders if "audio" in e.modalities and e.sample_rate}
    if len(rates) > 1:
        raise SystemExit(f"--encoders: the audio encoders expect different sample rates {sorted(rates)}; use one")
    cfg = WebDatasetConfig(urls=args.src, ts_field=args.ts_field, topic_field=args.topic_field,
                           caption_field=args.caption_field, audio_sample_rate=rates.pop() if rates else 48000)
    skips = WebDatasetSkips()
    t0 = time.perf_counter()
    encode_s, forwards_of = 0.0, 0
    bar = tqdm(desc="samples", unit=" samples", file=sys.stderr, disable=not args.progress)

    def flush(batch: list) -> None:
        nonlocal encode_s, forwards_of
        t = time.perf_counter()
        emb, has = encode_samples(encoders, batch)
        encode_s += time.perf_counter() - t
        forwards_of += 1
        writer.write_block(keys=[s.key for s in batch], ts=np.array([s.ts for s in batch], np.int64), emb=emb,
                           has=has, topics=[s.topic for s in batch], texts={"txt": [s.caption for s in batch]})
        bar.update(len(batch))

    with ShardSetWriter(args.out, args.name, args.events_per_shard) as writer:
        batch: list = []
        for sample in iter_webdataset(cfg, skips):
            batch.append(sample)
            if len(batch) == args.batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    bar.close()
    manifest = writer.close()
    report = {"events": manifest.total_events, "shards": len(manifest.shards), "spaces": manifest.spaces,
              "skipped": skips.report(), "batches": forwards_of, "batch_size": args.batch_size,
              "encode_s": round(encode_s, 3), "encode_items_per_s": round(manifest.total_events / encode_s, 1)
              if encode_s else None, "seconds": round(time.perf_counter() - t0, 3), "out": str(args.out)}
    if manifest.total_events == 0:
        raise SystemExit(f"--src {args.src!r}: 0 events written; every sample was skipped ({skips.report()}); "
                         "check the encoders' modalities and the samples' entries")
    return report


def build_retrieval(args: argparse.Namespace) -> dict:
    """A standard retrieval test set -> item events + labelled caption queries (``data_modules.retrieval_sets``)."""
    from .retrieval_sets import read_retrieval_set, write_retrieval_set

    try:
        items = read_retrieval_set(args.format, Path(args.src), Path(args.media_root), args.split)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--src {args.src!r} ({args.format}): {err}") from None
    return write_retrieval_set(items, _encoders(args), Path(args.out), args.batch_size, args.events_per_shard)


ARRAY_META = ("keys", "ts", "topics")
"""Arrays of ``build_shards arrays`` input with a meaning of their own; every other (n, d) float
array is a space, and ``has_<space>`` (n,) bool marks the rows that have it."""


def load_arrays(src: Path) -> dict[str, np.ndarray]:
    """``src``: an ``.npz`` file or a folder of ``<name>.npy`` files, read with ``allow_pickle=False``
    (an object array is refused: it needs pickle)."""
    try:
        if src.is_dir():
            files = sorted(src.glob("*.npy"))
            if not files:
                raise SystemExit(f"--src {str(src)!r} holds no .npy files; pass an .npz or a folder of <name>.npy")
            return {p.stem: np.load(p, allow_pickle=False) for p in files}
        with np.load(src, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise SystemExit(f"--src {str(src)!r}: {err}; store keys/topics as fixed-width strings (np.str_), never "
                         "object arrays (they need pickle, which is refused)") from None
    except (OSError, EOFError) as err:
        raise SystemExit(f"--src {str(src)!r} is not a readable .npz / .npy folder ({type(err).__name__}: {err})") from None


def build_arrays(args: argparse.Namespace) -> dict:
    """Users' precomputed embeddings -> block shards: ``keys`` (n,) strings (default: row numbers),
    ``ts`` (n,) ints (default: row order), ``topics`` (n,) strings, one (n, d) float array per space,
    ``has_<space>`` (n,) bool for spaces some rows lack (their rows are written absent)."""
    arrays = load_arrays(Path(args.src))
    spaces = {k: v for k, v in arrays.items() if k not in ARRAY_META and not k.startswith("has_")}
    if not spaces:
        raise SystemExit(f"--src {args.src!r} holds {sorted(arrays)}: no (n, d) embedding array; name one per space, "
                         "e.g. clip.npy, clap.npy")
    n = {len(v) for v in spaces.values()}
    if len(n) != 1:
        raise SystemExit(f"--src {args.src!r}: the spaces have different row counts "
                         f"{ {k: len(v) for k, v in spaces.items()} }; every array needs one row per event")
    n = n.pop()
    for k, v in spaces.items():
        if v.ndim != 2 or v.dtype.kind not in "fiu":
            raise SystemExit(f"--src {args.src!r}: {k} has shape {v.shape} dtype {v.dtype}; a space is an (n, d) "
                             "float array")
    keys = arrays.get("keys")
    keys = [str(i) for i in range(n)] if keys is None else [str(k) for k in keys.tolist()]
    ts = arrays.get("ts", np.arange(n))
    topics = arrays.get("topics")
    for name, col in (("keys", keys), ("ts", ts), ("topics", topics)):
        if col is not None and len(col) != n:
            raise SystemExit(f"--src {args.src!r}: {name} has {len(col)} rows, the spaces {n}")
    if ts.dtype.kind not in "iu":
        raise SystemExit(f"--src {args.src!r}: ts has dtype {ts.dtype}; pass integers (e.g. unix milliseconds)")
    if len(set(keys)) != n:
        raise SystemExit(f"--src {args.src!r}: keys repeat ({n - len(set(keys))} duplicates); an event key is its id")
    has = {}
    for k in spaces:
        mask = arrays.get(f"has_{k}")
        if mask is not None:
            if mask.shape != (n,) or mask.dtype != bool:
                raise SystemExit(f"--src {args.src!r}: has_{k} must be ({n},) bool, got {mask.shape} {mask.dtype}")
            has[k] = mask
    t0 = time.perf_counter()
    manifest = write_blocks(args.out, keys=keys, ts=ts, emb={k: v.astype(np.float32) for k, v in spaces.items()},
                            topics=None if topics is None else [str(t) for t in topics.tolist()], has=has or None,
                            name=args.name, block_events=args.block_events, events_per_shard=args.events_per_shard)
    return {"events": manifest.total_events, "shards": len(manifest.shards), "spaces": manifest.spaces,
            "absent_rows": {k: int((~m).sum()) for k, m in has.items()}, "seconds": round(time.perf_counter() - t0, 3),
            "out": str(args.out)}


def _decode_file(encoders: list, path: Path, ext: str) -> dict:
    """A media file decoded for the encoders: ``image`` (PIL or None) and ``audio`` (encoder space ->
    mono wave at that encoder's rate). A MediaError names the file."""
    from luma_pl.media import load_audio, load_image

    image = load_image(path) if ext in IMAGE_EXTS else None
    audio = {enc.space: load_audio(path, enc.sample_rate, window_s=enc.audio_window_s)
             for enc in encoders if ext in AUDIO_EXTS and "audio" in enc.modalities}
    return {"image": image, "audio": audio}


def _embed_batch(encoders: list, events: list[dict]) -> list[dict[str, np.ndarray]]:
    """Decoded files (``_decode_file`` + ``caption``) -> per event ``{<space>: (d,), <space>_text: (d,)}``:
    the image/audio by each encoder's own tower and the caption by its text tower (a caption embedded
    by both CLAP-text and CLIP-text is the anchor pair the bridge learns from), one forward pass per
    tower for the whole batch. Unit rows, float32."""
    out: list[dict[str, np.ndarray]] = [{} for _ in events]
    n = max(1, len(events))

    def put(space: str, rows: list[int], vectors) -> None:
        for i, v in zip(rows, vectors.cpu().numpy(), strict=True):
            out[i][space] = v

    for enc in encoders:
        if "image" in enc.modalities:
            rows = [i for i, e in enumerate(events) if e["image"] is not None]
            if rows:
                put(enc.space, rows, enc.encode_image([events[i]["image"] for i in rows], batch_size=n))
        if "audio" in enc.modalities:
            rows = [i for i, e in enumerate(events) if enc.space in e["audio"]]
            if rows:
                put(enc.space, rows, enc.encode_audio([events[i]["audio"][enc.space] for i in rows], batch_size=n))
        if "text" in enc.modalities:
            rows = [i for i, e in enumerate(events) if e["caption"]]
            if rows:
                # texts: the encoder's own length-sorted chunks (padding costs more than passes)
                put(f"{enc.space}_text", rows, enc.encode_text([events[i]["caption"] for i in rows]))
    return out


def _embed_frames(encoders: list, path: Path, fps: float, max_frames: int | None) -> dict:
    """Video: frames sampled at ``fps`` through each image encoder. Returns ``{"clip": {space: (d,)}``
    (mean-pooled, re-normalised) and ``"frames": [{space + "_frame": (d,)}, ...]}`` in time order."""
    from luma_pl.media.video import embed_video

    clip: dict[str, np.ndarray] = {}
    frames: list[dict[str, np.ndarray]] = []
    for enc in encoders:
        if "image" not in enc.modalities:
            continue
        per_frame, pooled = embed_video(enc, path, fps=fps, max_frames=max_frames)  # (F, d), (d,)
        clip[enc.space] = pooled.cpu().numpy()
        frames += [{} for _ in range(per_frame.shape[0] - len(frames))]
        for f in range(per_frame.shape[0]):
            frames[f][f"{enc.space}_frame"] = per_frame[f].cpu().numpy()
    return {"clip": clip, "frames": frames}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_modules.build_shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("demo", "folder", "webdataset", "arrays", "retrieval"):
        s = sub.add_parser(name, help=f"build shards from the {name} source")
        s.add_argument("--out", required=True, help="output folder for <name>-%%06d.tar + manifest.json")
        s.add_argument("--name", default=name, help="shard base name (default: %(default)s)")
        s.add_argument("--events-per-shard", type=int, default=512 if name == "demo" else 8192,
                       help="events per shard (default: %(default)s); replay needs >= ranks x workers shards")
        s.add_argument("--device", default="cpu", help="encoder device: cpu, cuda, cuda:<i>")
        if name == "demo":
            s.add_argument("--packages", nargs="+", default=["numpy", "scipy"], help="packages to walk")
            s.add_argument("--max-items", type=int, default=None, help="keep at most N items")
            s.add_argument("--cache-dir", default=None, help="corpus cache root (default ~/.cache/luma_pl)")
            s.add_argument("--block-events", type=int, default=256, help="events per block sample (default: %(default)s)")
        elif name == "retrieval":
            s.add_argument("--format", required=True, choices=("karpathy", "clotho", "audiocaps", "jsonl"),
                           help="annotation format (COCO/Flickr30k Karpathy JSON, Clotho CSV, AudioCaps CSV, JSONL)")
            s.add_argument("--src", required=True, help="the annotation file")
            s.add_argument("--media-root", required=True, help="folder the annotation's file names are relative to")
            s.add_argument("--split", default="test", help="Karpathy split to keep (default: %(default)s)")
            s.add_argument("--encoders", nargs="+", required=True, help="encoder kinds or EncoderConfig JSON objects")
            s.add_argument("--batch-size", type=int, default=64, help="media per forward pass (default: %(default)s)")
        elif name == "arrays":
            s.add_argument("--src", required=True, help="an .npz, or a folder of <name>.npy: one (n, d) array per "
                           "space, optional keys / ts / topics (n,) and has_<space> (n,) bool")
            s.add_argument("--block-events", type=int, default=1024, help="events per block sample (default: %(default)s)")
        elif name == "webdataset":
            s.add_argument("--src", required=True, help="WebDataset shards: a brace pattern "
                           "('data/{00000..00009}.tar'), a folder of .tar files, or a pipe:/URL spec")
            s.add_argument("--encoders", nargs="+", default=["minilm", "wordllama"],
                           help="encoder kinds, or EncoderConfig JSON objects for clip/clap")
            s.add_argument("--batch-size", type=int, default=64, help="samples per forward pass (default: "
                           "%(default)s; 1 = one file per forward)")
            s.add_argument("--ts-field", default=None, help="JSON field holding each sample's integer ts "
                           "(default: the sample's position in the stream)")
            s.add_argument("--topic-field", default=None, help="JSON field holding each sample's topic")
            s.add_argument("--caption-field", default="caption", help="JSON field read as the caption when a "
                           "sample has no .txt (default: %(default)s)")
            s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
        else:
            s.add_argument("--src", required=True, help="folder of images/audio/.txt (+ captions.jsonl|csv)")
            s.add_argument("--encoders", nargs="+", default=["minilm", "wordllama"],
                           help="encoder kinds, or EncoderConfig JSON objects for clip/clap")
            s.add_argument("--video-fps", type=float, default=1.0, help="frames sampled per second of video")
            s.add_argument("--batch-size", type=int, default=256, help="files encoded together (default: "
                           "%(default)s): images / audio in one forward pass, texts in the encoder's "
                           "length-sorted chunks; 1 = one file per forward; a video is always its own batch")
            s.add_argument("--video-max-frames", type=int, default=64, help="at most this many frames per video")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    limit_cpu_threads()
    build = {"demo": build_demo, "folder": build_folder, "webdataset": build_webdataset,
             "arrays": build_arrays, "retrieval": build_retrieval}[args.command]
    report = build(args)
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
