"""Batched on-the-fly encoding vs one file per forward pass, on the same decoded samples, same run.

Data: ``--n`` img2dataset-style samples (jpg + txt + json) in standard WebDataset shards, read and
decoded once with ``data_modules.webdataset_source`` (decoding is not timed). Encoders: a tiny
randomly-initialised open_clip model (image + text towers, the tests' architecture) and the
packaged MiniLM sentence encoder (real weights, text). Timed: ``build_shards.encode_samples`` over
all samples in batches of 1 (one file per forward, what ``build_shards folder`` does) and of
``--batch`` (what ``build_shards webdataset`` does); medians of ``--reps`` passes, items/s and the
ratio batched / one-per-forward.

Usage: python bench/bench_encode.py [--n 256] [--batch 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from PIL import Image, ImageDraw  # noqa: E402

from data_modules.build_shards import encode_samples  # noqa: E402
from data_modules.webdataset_source import WebDatasetConfig, WebDatasetSkips, iter_webdataset  # noqa: E402
from luma_pl.threads import limit_cpu_threads  # noqa: E402


def write_shards(folder: Path, n: int, per_shard: int = 100) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tar = None
    for i in range(n):
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(folder / f"{i // per_shard:05d}.tar", "w")
        img = Image.new("RGB", (64, 64), (i * 7 % 255, 255 - i * 3 % 255, 80))
        ImageDraw.Draw(img).rectangle((i % 30, 10, 30 + i % 30, 50), fill=(240, 240, 240))
        buf = io.BytesIO()
        img.save(buf, format="JPEG")
        for ext, data in (("jpg", buf.getvalue()), ("txt", f"a drawing of shape number {i} on a plain field".encode()),
                          ("json", json.dumps({"key": f"{i:09d}", "status": "success"}).encode())):
            info = tarfile.TarInfo(f"{i:09d}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tar.close()


def items_per_s(encoders, samples, batch: int, reps: int) -> float:
    times = []
    for _ in range(reps + 1):  # the first pass warms up
        t = time.perf_counter()
        for i in range(0, len(samples), batch):
            encode_samples(encoders, samples[i:i + batch])
        times.append(time.perf_counter() - t)
    return len(samples) / statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    limit_cpu_threads()
    from tiny_encoders import TINY_CLIP

    from luma_pl.encoders import EncoderConfig, build_encoder

    with tempfile.TemporaryDirectory() as tmp:
        write_shards(Path(tmp) / "wds", args.n)
        skips = WebDatasetSkips()
        samples = list(iter_webdataset(WebDatasetConfig(urls=str(Path(tmp) / "wds")), skips))
    assert len(samples) == args.n and skips.total() == 0
    rows = []
    for name, enc in (("tiny open_clip (image + text)", build_encoder(EncoderConfig(kind="clip", model_cfg=TINY_CLIP,
                                                                                    precision="fp32"))),
                      ("MiniLM (text)", build_encoder(EncoderConfig(kind="minilm")))):
        one = items_per_s([enc], samples, 1, args.reps)
        many = items_per_s([enc], samples, args.batch, args.reps)
        rows.append({"encoder": name, "one_per_forward_items_per_s": round(one, 1),
                     f"batch_{args.batch}_items_per_s": round(many, 1), "ratio": round(many / one, 2)})
    print(f"| encoder | one file per forward (items/s) | batch {args.batch} (items/s) | batched / one |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoder']} | {r['one_per_forward_items_per_s']} | {r[f'batch_{args.batch}_items_per_s']} | "
              f"{r['ratio']}x |")
    print(json.dumps({"n": args.n, "batch": args.batch, "reps": args.reps, "rows": rows}))


if __name__ == "__main__":
    main()
