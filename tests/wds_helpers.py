"""Standard WebDataset shards as users bring them, built by the tests (nothing is downloaded)."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

from PIL import Image, ImageDraw
from tar_helpers import add_member


class _Trap:
    """Unpickling this writes the marker file: the test proves it is never unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _jpeg(i: int) -> bytes:
    img = Image.new("RGB", (40, 40), (20 * (i % 12), 255 - 15 * (i % 16), 90))
    ImageDraw.Draw(img).ellipse((i % 20, 5, 20 + i % 20, 30), fill=(250, 250, 250))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def write_wds(folder, shards: int, per_shard: int, sample, extra=None) -> list[str]:
    """``00000.tar``..: ``per_shard`` samples each, ``sample(n) -> (key, {ext: bytes})`` for the n-th;
    ``extra(s, tar)`` may append hostile samples to shard s. Returns the good keys in stream order."""
    folder.mkdir(parents=True, exist_ok=True)
    good, n = [], 0
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for _ in range(per_shard):
                key, entries = sample(n)
                for ext, data in entries.items():
                    add_member(tar, f"{key}.{ext}", data)
                good.append(key)
                n += 1
            if extra is not None:
                extra(s, tar)
    return good


def img2dataset_shards(folder, shards=3, per_shard=6, marker=None):
    """``00000.tar``.. like img2dataset writes them: ``<key>.jpg`` + ``.txt`` + ``.json``. Shard 1 also
    holds four hostile samples: a pickle entry, an undecodable jpg, a JSON list, no usable entry;
    one good sample has no caption. Returns the good keys in stream order."""

    def sample(n):
        key = f"{n:09d}"
        entries = {"jpg": _jpeg(n), "txt": f"a photo of thing {n}".encode()}
        if n == 4:  # sample 4 has no caption
            del entries["txt"]
        entries["json"] = json.dumps({"key": key, "status": "success", "ts": 1000 + 10 * n, "topic": f"t{n % 3}",
                                      "url": f"http://x/{n}"}).encode()
        return key, entries

    def hostile(s, tar):
        if s == 1:
            add_member(tar, "evil.jpg", _jpeg(0))
            add_member(tar, "evil.pkl", pickle.dumps(_Trap(str(marker or folder / "pwned"))))
            add_member(tar, "broken.jpg", b"\xff\xd8 not a jpeg")
            add_member(tar, "broken.txt", b"caption")
            add_member(tar, "listjson.jpg", _jpeg(1))
            add_member(tar, "listjson.json", b"[1, 2, 3]")
            add_member(tar, "nothing.cls", b"7")

    return write_wds(folder, shards, per_shard, sample, hostile)

def _flac(i: int, rate: int = 48000, seconds: float = 0.5) -> bytes:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(rate * seconds)) / rate
    wave = (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="FLAC")
    return buf.getvalue()


def clap_style_shards(folder, shards=2, per_shard=5):
    """CLAP-training-style shards: ``<key>.flac`` + ``<key>.json`` with ``{"text": [captions...]}``;
    shard 0 also holds a sample whose flac does not decode. Returns the good keys."""
    words = ["dog barks", "cat meows", "piano music", "rain sound", "bird sings"]

    def sample(n):
        return f"clip{n:06d}", {"flac": _flac(n), "json": json.dumps(
            {"text": [f"a {words[n % 5]}", "the sound of a loud bird"], "tag": words[n % 5]}).encode()}

    def hostile(s, tar):
        if s == 0:
            add_member(tar, "badaudio.flac", b"fLaC not really")
            add_member(tar, "badaudio.json", b'{"text": ["a dog barks"]}')

    return write_wds(folder, shards, per_shard, sample, hostile)
