"""Media decoding for the frozen encoders; every failure is a ``MediaError`` naming the file.

- ``load_audio(path_or_bytes, target_sr, window_s=None, mono=True)`` -> float32 samples
- ``load_image(path_or_bytes)`` -> RGB ``PIL.Image``
- ``sample_video_frames(path_or_bytes, fps, max_frames)`` -> frames and timestamps;
  ``embed_video(encoder, path_or_bytes, fps)`` -> per-frame and mean-pooled clip vectors
"""

from .audio import is_silent, load_audio, rms_dbfs
from .errors import MediaError
from .image import load_image
from .video import embed_video, sample_video_frames

__all__ = [
    "MediaError",
    "load_audio",
    "is_silent",
    "rms_dbfs",
    "load_image",
    "sample_video_frames",
    "embed_video",
]
