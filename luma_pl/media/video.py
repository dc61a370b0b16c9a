"""Video frames for the image encoders: decode with PyAV, keep frames at a fixed sampling rate.

Sampling rule: with step = 1/fps, keep the first decoded frame whose presentation time reaches
each of 0, step, 2*step, ... (times relative to the stream start). A 2 s clip sampled at 2 fps
therefore gives frames at 0.0, 0.5, 1.0 and 1.5 s: ``ceil(duration * fps)`` frames. When the video
is sparser than ``fps`` (e.g. a 1 fps slideshow sampled at 4 fps), each frame is kept once, never
duplicated, and skipped sample times are not filled in.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import av
import torch
from PIL import Image

from .errors import MediaError, describe_source

if TYPE_CHECKING:
    from luma_pl.encoders.base import FrozenEncoder

Source = str | os.PathLike | bytes | bytearray | memoryview
# Presentation times are rationals in the stream's time base; a millisecond of slack keeps a frame
# stamped 0.49999 s from missing the 0.5 s sample time.
TIME_SLACK_S = 1e-3


def sample_video_frames(
    source: Source, fps: float = 1.0, max_frames: int | None = None, name: str | None = None
) -> tuple[list[Image.Image], list[float]]:
    """Decode ``source`` (a path or the file's bytes) and return ``(frames, timestamps_s)``.

    ``frames`` are RGB PIL images, ``timestamps_s`` their presentation times in seconds from the
    stream start. At most ``max_frames`` frames are returned (decoding stops there). Raises
    ``MediaError`` naming the file when it is missing, empty, corrupt or has no video frames.
    """
    if not fps > 0:
        raise ValueError(f"fps={fps} must be > 0 frames per second, e.g. 1.0")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames={max_frames} must be >= 1, or None for no limit")
    label = describe_source(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise MediaError(label, "the file is empty (0 bytes)")
        opened = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise MediaError(label, "no such file")
        if path.stat().st_size == 0:
            raise MediaError(label, "the file is empty (0 bytes)")
        opened = str(path)

    step = 1.0 / fps
    frames: list[Image.Image] = []
    times: list[float] = []
    next_t = 0.0
    try:
        with av.open(opened) as container:
            if not container.streams.video:
                raise MediaError(label, "the file has no video stream")
            stream = container.streams.video[0]
            origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            for frame in container.decode(stream):  # presentation order
                if frame.time is None:
                    continue  # a frame without a timestamp cannot be placed on the sampling grid
                t = float(frame.time) - origin
                if t + TIME_SLACK_S < next_t:
                    continue
                frames.append(frame.to_image())  # RGB
                times.append(t)
                # next grid point strictly after this frame (skips grid points a sparse video missed)
                next_t = (math.floor((t + TIME_SLACK_S) / step) + 1) * step
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as err:
        raise MediaError(label, f"not a readable video ({type(err).__name__}: {err})") from err
    if not frames:
        raise MediaError(label, "no decodable video frames")
    return frames, times


def embed_video(
    encoder: FrozenEncoder,
    source: Source,
    fps: float = 1.0,
    max_frames: int | None = None,
    batch_size: int | None = None,
    name: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed sampled frames with ``encoder``'s image tower.

    Returns ``(per_frame, clip)``: ``per_frame`` is ``(F, d)`` unit rows in time order, ``clip`` is
    ``(d,)``, the mean of the frame vectors re-normalised to unit length (the usual CLIP video
    baseline: mean pooling of frame embeddings).
    """
    frames, _ = sample_video_frames(source, fps=fps, max_frames=max_frames, name=name)
    per_frame = encoder.encode_image(frames, batch_size=batch_size)  # (F, d)
    clip = torch.nn.functional.normalize(per_frame.mean(dim=0), dim=0)  # (d,)
    return per_frame, clip
