"""Audio decoding for the audio encoders: any file libsndfile reads -> float32 at the model's rate.

Backends: ``torchaudio`` when it is installed (it reads more containers, e.g. mp3/m4a through
ffmpeg), otherwise ``soundfile`` (libsndfile: wav, flac, ogg, ...) + ``soxr`` for resampling.
The two resamplers differ in the last digits; pass ``backend="soundfile"`` where results must be
bit-identical across machines.

Window: when ``window_s`` is given the output has exactly ``round(window_s * target_sr)`` samples:
longer audio is cropped deterministically (``crop="start"`` keeps the first window,
``crop="centre"`` the middle one); shorter audio is zero-padded at the end.

Silent audio is valid input and decodes to (near) zeros; ``is_silent`` lets callers drop it.
"""

from __future__ import annotations

import io
import os

import numpy as np
import soundfile as sf
import soxr

from .errors import MediaError, describe_source, read_source

try:  # optional: more formats; see the module docstring
    import torchaudio
except ImportError:  # the default install has no torchaudio
    torchaudio = None

Source = str | os.PathLike | bytes | bytearray | memoryview
BACKENDS = ("torchaudio", "soundfile")
CROPS = ("start", "centre")


def load_audio(
    source: Source,
    target_sr: int,
    window_s: float | None = None,
    mono: bool = True,
    name: str | None = None,
    crop: str = "start",
    backend: str | None = None,
) -> np.ndarray:
    """Decode ``source`` (a path or the file's bytes) to float32 samples at ``target_sr`` Hz.

    Returns ``(T,)`` when ``mono`` (channels averaged), else ``(C, T)``. ``name`` labels a bytes
    payload in errors. Raises ``MediaError`` naming the file when it is missing, empty, corrupt,
    has zero samples or non-finite samples.
    """
    if target_sr <= 0:
        raise ValueError(f"target_sr={target_sr} must be a positive sample rate in Hz, e.g. 48000")
    if window_s is not None and window_s <= 0:
        raise ValueError(f"window_s={window_s} must be > 0 seconds, or None for the whole file")
    if crop not in CROPS:
        raise ValueError(f"crop={crop!r} is invalid; use one of {CROPS}")
    if backend is None:
        backend = "torchaudio" if torchaudio is not None else "soundfile"
    if backend not in BACKENDS or (backend == "torchaudio" and torchaudio is None):
        raise ValueError(f"backend={backend!r} is unavailable; use 'soundfile' (or install torchaudio)")

    label = describe_source(source, name)
    raw = read_source(source, label)
    if backend == "torchaudio":
        wave, sr = _decode_torchaudio(raw, label, target_sr)
    else:
        wave, sr = _decode_soundfile(raw, label)
        if sr != target_sr:
            # soxr takes (T, C); its HQ setting is a linear-phase filter with < 0.01 dB ripple.
            wave = np.ascontiguousarray(soxr.resample(wave.T, sr, target_sr).T, dtype=np.float32)
    if mono:
        wave = wave.mean(axis=0, keepdims=True)  # (1, T)
    if window_s is not None:
        wave = _fit_window(wave, int(round(window_s * target_sr)), crop)
    return wave[0] if mono else wave


def is_silent(wave: np.ndarray, threshold_db: float = -60.0) -> bool:
    """True when the RMS level of ``wave`` is below ``threshold_db`` dBFS (full scale = 1.0).

    An empty or all-zero wave is silent. -60 dBFS is roughly the noise floor of a quiet room
    recording; raise it (e.g. -40) to also drop near-silent clips.
    """
    return rms_dbfs(wave) < threshold_db


def rms_dbfs(wave: np.ndarray) -> float:
    """RMS level in dBFS (``-inf`` for silence or an empty array)."""
    x = np.asarray(wave, dtype=np.float64)
    if x.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")




def _decode_soundfile(raw: bytes, label: str) -> tuple[np.ndarray, int]:
    try:
        data, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise MediaError(label, f"not a readable audio file ({err})") from err
    return _checked(np.ascontiguousarray(data.T), int(sr), label)  # (C, T)


def _decode_torchaudio(raw: bytes, label: str, target_sr: int) -> tuple[np.ndarray, int]:
    try:
        tensor, sr = torchaudio.load(io.BytesIO(raw))  # (C, T) float32
    except Exception as err:  # torchaudio raises backend-specific types (RuntimeError, OSError, ...)
        raise MediaError(label, f"not a readable audio file ({err})") from err
    wave, sr = _checked(tensor.numpy(), int(sr), label)
    if sr != target_sr:
        import torch

        wave = torchaudio.functional.resample(torch.from_numpy(wave), sr, target_sr).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32), target_sr


def _checked(wave: np.ndarray, sr: int, label: str) -> tuple[np.ndarray, int]:
    if wave.shape[-1] == 0 or wave.shape[0] == 0:
        raise MediaError(label, "the audio has zero samples")
    if sr <= 0:
        raise MediaError(label, f"invalid sample rate {sr}")
    if not np.isfinite(wave).all():
        raise MediaError(label, "the audio contains NaN or inf samples")
    return wave, sr


def _fit_window(wave: np.ndarray, n: int, crop: str) -> np.ndarray:
    """``(C, T)`` -> ``(C, n)``: crop (start or centre) or zero-pad at the end."""
    t = wave.shape[1]
    if t > n:
        start = 0 if crop == "start" else (t - n) // 2
        return np.ascontiguousarray(wave[:, start : start + n])
    if t < n:
        return np.pad(wave, ((0, 0), (0, n - t)))
    return wave
