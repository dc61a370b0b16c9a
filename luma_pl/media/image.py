"""Image decoding for the image encoders: path or bytes -> a fully decoded RGB ``PIL.Image``.

Pillow opens lazily; a truncated JPEG can pass ``open`` and only fail when pixels are read, far
from the file name. We ``verify()`` the structure, then reopen and ``load()`` the pixels here, so
any failure is a ``MediaError`` naming the file.
"""

from __future__ import annotations

import io
import os

from PIL import Image, ImageOps

from .errors import MediaError, describe_source, read_source

Source = str | os.PathLike | bytes | bytearray | memoryview


def load_image(source: Source, name: str | None = None) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) to an RGB image.

    EXIF orientation is applied (phone photos come out upright). Transparent images are
    composited over white, since dropping alpha would expose whatever colour the transparent
    pixels happen to store (often black). Pillow's decompression-bomb limit stays on.
    ``name`` labels a bytes payload in errors.
    """
    label = describe_source(source, name)
    raw = read_source(source, label)

    try:
        with Image.open(io.BytesIO(raw)) as probe:
            probe.verify()  # structure and checksums; the object is unusable afterwards
        img = Image.open(io.BytesIO(raw))
        img.load()  # decode every pixel now
        img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(label, f"not a readable image ({type(err).__name__}: {err})") from err
    if img.width == 0 or img.height == 0:
        raise MediaError(label, f"the image has no pixels ({img.width}x{img.height})")
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
