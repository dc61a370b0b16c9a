"""Media decoding: every test writes its own small files (tones, drawings, a short video)."""

from __future__ import annotations

import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image, ImageDraw

from luma_pl.encoders.base import FrozenEncoder
from luma_pl.media import (
    MediaError,
    embed_video,
    is_silent,
    load_audio,
    load_image,
    rms_dbfs,
    sample_video_frames,
)
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()


def _tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)])


# ------------------------------------------------------------------ audio
@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_audio_resampled_44k1_to_48k_keeps_tone(tmp_path, fmt):
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, _tone(1000.0, 44_100, 1.0), 44_100, format=fmt)
    wave = load_audio(path, 48_000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape == (48_000,)  # 1 s at the new rate
    assert abs(_peak_hz(wave, 48_000) - 1000.0) <= 1.0  # 1 Hz FFT bins
    # amplitude survives (RMS of a 0.5 sine is 0.354; ignore the filter's edge transients)
    assert abs(np.sqrt(np.mean(wave[2000:-2000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def test_audio_stereo_downmix_and_channels(tmp_path):
    left, right = _tone(440.0, 16_000, 0.5, 0.8), _tone(880.0, 16_000, 0.5, 0.2)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 16_000)
    mono = load_audio(path, 16_000)
    assert mono.shape == (8_000,)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-4)  # FLAC is 16-bit: 3e-5 steps
    both = load_audio(path, 16_000, mono=False)
    assert both.shape == (2, 8_000)
    np.testing.assert_allclose(both[0], left, atol=1e-4)


def test_audio_window_crop_and_pad(tmp_path):
    path = tmp_path / "ramp.wav"
    ramp = np.linspace(-0.9, 0.9, 16_000, dtype=np.float32)  # 1 s at 16 kHz, every sample distinct
    sf.write(path, ramp, 16_000, subtype="FLOAT")
    full = load_audio(path, 16_000)
    np.testing.assert_array_equal(full, ramp)
    start = load_audio(path, 16_000, window_s=0.25)
    np.testing.assert_array_equal(start, ramp[:4_000])
    centre = load_audio(path, 16_000, window_s=0.25, crop="centre")
    np.testing.assert_array_equal(centre, ramp[6_000:10_000])
    padded = load_audio(path, 16_000, window_s=1.5)
    assert padded.shape == (24_000,)
    np.testing.assert_array_equal(padded[:16_000], ramp)
    assert not padded[16_000:].any()


def test_audio_from_bytes_and_silence(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(path, np.zeros(4_800, np.float32), 48_000)
    silent = load_audio(path.read_bytes(), 48_000, name="shard-000001/key.wav")
    assert silent.shape == (4_800,) and not silent.any()
    assert is_silent(silent) and rms_dbfs(silent) == float("-inf")
    tone = _tone(300.0, 48_000, 0.1, amp=0.5)
    assert rms_dbfs(tone) == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.05)  # -9.03 dBFS
    assert not is_silent(tone)
    assert is_silent(tone * 1e-4, threshold_db=-60.0)  # -89 dBFS
    assert not is_silent(tone * 1e-4, threshold_db=-100.0)


def test_audio_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    with pytest.raises(MediaError, match="corrupt.wav.*not a readable audio file"):
        load_audio(corrupt, 48_000)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.flac.*empty"):
        load_audio(empty, 48_000)
    no_frames = tmp_path / "no_frames.wav"
    sf.write(no_frames, np.zeros(0, np.float32), 48_000)
    with pytest.raises(MediaError, match="no_frames.wav.*zero samples"):
        load_audio(no_frames, 48_000)
    with pytest.raises(MediaError, match="missing.wav.*no such file"):
        load_audio(tmp_path / "missing.wav", 48_000)
    with pytest.raises(MediaError, match="key-7.flac"):
        load_audio(b"\x00\x01garbage", 48_000, name="key-7.flac")
    with pytest.raises(ValueError, match="target_sr=0"):
        load_audio(corrupt, 0)
    err = pickle.loads(pickle.dumps(MediaError("a/b.wav", "bad")))  # crosses DataLoader workers
    assert str(err) == "cannot use media file 'a/b.wav': bad" and err.path == "a/b.wav"


# ------------------------------------------------------------------ images
def _drawing() -> Image.Image:
    img = Image.new("RGB", (64, 48), (255, 255, 255))
    ImageDraw.Draw(img).rectangle((8, 8, 31, 39), fill=(255, 0, 0))
    return img


@pytest.mark.parametrize("fmt, tol", [("PNG", 0), ("JPEG", 12)])
def test_image_roundtrip(tmp_path, fmt, tol):
    path = tmp_path / f"drawing.{fmt.lower()}"
    _drawing().save(path, format=fmt, quality=95)
    for source in (path, path.read_bytes()):
        img = load_image(source)
        assert img.mode == "RGB" and img.size == (64, 48)
        assert np.abs(np.asarray(img, np.int16)[20, 20] - (255, 0, 0)).max() <= tol  # inside the box
        assert np.abs(np.asarray(img, np.int16)[5, 50] - (255, 255, 255)).max() <= tol


def test_image_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    path = tmp_path / "alpha.png"
    rgba.save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == (255, 255, 255)  # composited over white, not black
    assert img.getpixel((0, 0)) == (0, 0, 255)
    gray = tmp_path / "gray.png"
    Image.new("L", (3, 2), 77).save(gray)
    assert load_image(gray).getpixel((1, 1)) == (77, 77, 77)


def test_image_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(MediaError, match="corrupt.png.*not a readable image"):
        load_image(corrupt)
    truncated = tmp_path / "truncated.jpg"
    buf = tmp_path / "full.jpg"
    _drawing().resize((256, 192)).save(buf, quality=90)
    truncated.write_bytes(buf.read_bytes()[: buf.stat().st_size // 2])
    with pytest.raises(MediaError, match="truncated.jpg"):
        load_image(truncated)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.jpg.*empty"):
        load_image(empty)
    with pytest.raises(MediaError, match="<5 bytes>"):
        load_image(b"hello")


# ------------------------------------------------------------------ video
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]  # one per half second


def _write_video(path, seconds: float = 2.0, rate: int = 10, codec: str = "mpeg4") -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * rate)):
            colour = COLOURS[int(i / rate / 0.5) % len(COLOURS)]
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), colour, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "colours.mp4"
    _write_video(path)
    return path


def test_video_sampling_rate_and_content(video):
    frames, times = sample_video_frames(video, fps=2.0)
    assert len(frames) == 4  # 2 s at 2 fps
    np.testing.assert_allclose(times, [0.0, 0.5, 1.0, 1.5], atol=1e-3)
    for frame, colour in zip(frames, COLOURS, strict=True):
        assert frame.mode == "RGB" and frame.size == (64, 48)
        assert np.abs(np.asarray(frame, np.int16).mean(axis=(0, 1)) - colour).max() < 12
    assert len(sample_video_frames(video, fps=10.0)[0]) == 20  # every frame
    assert len(sample_video_frames(video, fps=40.0)[0]) == 20  # never duplicated
    assert len(sample_video_frames(video, fps=0.75)[0]) == 2  # t = 0 and 1.33 s -> frames at 0.0, 1.4
    assert len(sample_video_frames(video, fps=2.0, max_frames=3)[0]) == 3
    from_bytes, t2 = sample_video_frames(video.read_bytes(), fps=2.0, name="clip.mp4")
    assert t2 == times and len(from_bytes) == 4


class MeanColourEncoder(FrozenEncoder):
    """A parameter-free image 'encoder': the mean RGB of the image, so expected vectors are known."""

    space, dim, modalities = "rgb", 3, frozenset({"image"})

    def _encode_image(self, images):
        return torch.stack([torch.from_numpy(np.asarray(i, np.float32).mean(axis=(0, 1))) for i in images])


def test_embed_video_mean_pools_frames(video):
    per_frame, clip = embed_video(MeanColourEncoder(precision="fp32"), video, fps=2.0)
    assert per_frame.shape == (4, 3) and clip.shape == (3,)
    expected = torch.nn.functional.normalize(torch.tensor(COLOURS, dtype=torch.float32), dim=1)
    torch.testing.assert_close(per_frame, expected, atol=0.05, rtol=0)
    torch.testing.assert_close(clip, torch.nn.functional.normalize(per_frame.mean(0), dim=0))
    assert abs(float(clip.norm()) - 1.0) < 1e-6


def test_video_errors_name_the_file(tmp_path, video):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(MediaError, match="corrupt.mp4"):
        sample_video_frames(corrupt)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4.*empty"):
        sample_video_frames(empty)
    audio_only = tmp_path / "tone.wav"
    sf.write(audio_only, _tone(440.0, 8_000, 0.2), 8_000)
    with pytest.raises(MediaError, match="tone.wav.*no video stream"):
        sample_video_frames(audio_only)
    with pytest.raises(MediaError, match="missing.mp4.*no such file"):
        sample_video_frames(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="fps=0"):
        sample_video_frames(video, fps=0)
