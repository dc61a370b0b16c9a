"""open_clip image + text encoder (the canonical space).

Three ways to get a model, exactly one of them per encoder:

1. ``model_name`` + ``pretrained`` tag (``"ViT-B-32", "laion2b_s34b_b79k"``): open_clip's own
   registry; downloads into its cache on first use (never in tests).
2. ``path``: a local checkpoint file (with ``model_name`` giving the architecture), or a local
   folder holding ``open_clip_config.json`` + weights (open_clip's ``local-dir:`` schema).
3. ``model_cfg``: an explicit architecture dict (``embed_dim``, ``vision_cfg``, ``text_cfg``, as in
   open_clip's ``model_configs/*.json``, or an ``open_clip_config.json`` with ``model_cfg`` and
   ``preprocess_cfg``), random-initialised unless ``path`` names a checkpoint file for it.
   This is how tests build a tiny real ``open_clip.CLIP`` without any download.

Images go through open_clip's inference transform (resize, centre crop, normalise) and text
through its tokenizer; the default ``SimpleTokenizer`` reads the BPE vocabulary
(``bpe_simple_vocab_16e6.txt.gz``) shipped inside the open_clip package, so no download.
"""

from __future__ import annotations

import json
import os
from copy import deepcopy
from dataclasses import asdict
from typing import Any

import open_clip
import torch
from open_clip.model import set_model_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from .base import FrozenEncoder, existing_path


def _split_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Accept a bare model config or an ``open_clip_config.json`` dict -> (model_cfg, preprocess_cfg)."""
    if "model_cfg" in cfg:
        return deepcopy(cfg["model_cfg"]), dict(cfg.get("preprocess_cfg", {}))
    return deepcopy(cfg), {}


def _model_from_cfg(cfg: dict[str, Any], preprocess: dict[str, Any]) -> torch.nn.Module:
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(
            f"model_cfg lacks {missing}; give an open_clip model config with embed_dim, vision_cfg "
            f"and text_cfg (see open_clip/model_configs/ViT-B-32.json)"
        )
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    model_cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = model_cls(**cfg)
    # create_model attaches the preprocessing config to model.visual; do the same so that the
    # transform below is built the way open_clip builds it.
    pp = asdict(PreprocessCfg(size=model.visual.image_size))
    pp.update(preprocess)
    set_model_preprocess_cfg(model, pp)
    return model


def _tokenizer_from_cfg(cfg: dict[str, Any]):
    text_cfg = cfg["text_cfg"]
    context_length = int(text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH))
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(
            text_cfg["hf_tokenizer_name"],
            context_length=context_length,
            **text_cfg.get("tokenizer_kwargs", {}),
        )
    return open_clip.SimpleTokenizer(context_length=context_length, **text_cfg.get("tokenizer_kwargs", {}))


class OpenClipEncoder(FrozenEncoder):
    """CLIP text + image towers from open_clip, frozen. Output ``(N, embed_dim)`` unit rows.

    Args:
        model_name: open_clip architecture name (``open_clip.list_models()``), e.g. ``"ViT-B-32"``.
        pretrained: an open_clip pretrained tag for ``model_name`` (may download on first use).
        path: local checkpoint file (architecture from ``model_name`` or ``model_cfg``) or a folder
            with ``open_clip_config.json`` and weights.
        model_cfg: explicit architecture dict; random weights unless ``path`` is a checkpoint file.
        space: name of the embedding space (the ``<space>.npy`` shard entry).
    """

    modalities = frozenset({"text", "image"})

    def __init__(
        self,
        model_name: str | None = "ViT-B-32",
        pretrained: str | None = None,
        path: str | os.PathLike | None = None,
        model_cfg: dict[str, Any] | None = None,
        space: str = "clip",
        device: str | torch.device = "cpu",
        precision: str = "bf16",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(precision=precision, batch_size=batch_size)
        self.space = space
        if path is not None:
            path = existing_path(
                path, "path", "give an open_clip checkpoint file or a folder with open_clip_config.json"
            )

        if model_cfg is not None:
            if pretrained is not None:
                raise ValueError(
                    f"pretrained={pretrained!r} cannot be combined with model_cfg; pretrained tags belong to "
                    f"named models: drop model_cfg, or give the checkpoint file as path="
                )
            arch, preprocess = _split_config(model_cfg)
            embed_dim = int(arch["embed_dim"])
            self.tokenizer = _tokenizer_from_cfg(arch)
            model = _model_from_cfg(arch, preprocess)
            if path is not None:
                if not path.is_file():
                    raise ValueError(f"path={str(path)!r} must be a checkpoint file when model_cfg is given")
                open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
        elif path is not None and path.is_dir():
            ident = f"local-dir:{path}"
            with open(path / "open_clip_config.json", encoding="utf-8") as f:
                embed_dim = int(_split_config(json.load(f))[0]["embed_dim"])
            model = open_clip.create_model(ident, weights_only=True)
            self.tokenizer = open_clip.get_tokenizer(ident)
        else:
            if not model_name:
                raise ValueError("model_name is required unless model_cfg or a path folder is given")
            if pretrained is None and path is None:
                raise ValueError(
                    f"OpenClipEncoder(model_name={model_name!r}) has no weights: pass pretrained= a tag "
                    f"({open_clip.list_pretrained_tags_by_model(model_name)[:4]} ...), path= a checkpoint "
                    f"file, or model_cfg= for a deliberately random model"
                )
            arch = open_clip.get_model_config(model_name)
            if arch is None:
                raise ValueError(
                    f"model_name={model_name!r} is not an open_clip model; see open_clip.list_models()"
                )
            embed_dim = int(arch["embed_dim"])
            model = open_clip.create_model(
                model_name, pretrained=str(path) if path is not None else pretrained, weights_only=True
            )
            self.tokenizer = open_clip.get_tokenizer(model_name)

        self.model = model
        self.dim = embed_dim
        # open_clip's inference transform: PIL -> (3, H, W) normalised float tensor.
        self.preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
        self.to(device)
        self.freeze()

    def encode_image(self, images, batch_size: int | None = None) -> torch.Tensor:
        """``images``: N PIL images (any mode; converted to RGB) -> ``(N, dim)`` float32, unit rows."""
        images = list(images)
        for i, img in enumerate(images):  # checked up front so the index is global, not per chunk
            if not isinstance(img, Image.Image):
                raise ValueError(
                    f"images[{i}] is a {type(img).__name__}, not a PIL image; load it with luma_pl.media.load_image"
                )
        return super().encode_image(images, batch_size)

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)  # (b, context_length) int64
        return self.model.encode_text(tokens)  # (b, dim)

    def _encode_image(self, images: list) -> torch.Tensor:
        pixels = [self.preprocess(img.convert("RGB")) for img in images]  # each (3, H, W)
        batch = torch.stack(pixels).to(self.device)  # (b, 3, H, W)
        return self.model.encode_image(batch)  # (b, dim)
