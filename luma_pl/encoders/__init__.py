"""Frozen encoders behind one interface (``FrozenEncoder``), and a config-driven factory.

Imports of the heavy backends (open_clip, transformers) happen inside ``build_encoder`` and on
first attribute access, so ``import luma_pl.encoders`` stays cheap for code that only needs the
config or the base class.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from luma_pl.configuration import ConfigError, StrictConfig, require

from .base import MODALITIES, FrozenEncoder, ModalityNotSupported, check_texts

KINDS = ("clip", "clap", "minilm", "wordllama")
DEVICES_HINT = "'cpu', 'cuda' or 'cuda:<index>'"

__all__ = [
    "MODALITIES",
    "KINDS",
    "FrozenEncoder",
    "ModalityNotSupported",
    "check_texts",
    "OpenClipEncoder",
    "ClapEncoder",
    "MiniLMEncoder",
    "WordLlamaEncoder",
    "EncoderConfig",
    "build_encoder",
]

_LAZY = {
    "OpenClipEncoder": ".clip",
    "ClapEncoder": ".clap",
    "MiniLMEncoder": ".minilm",
    "WordLlamaEncoder": ".wordllama",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass
class EncoderConfig(StrictConfig):
    """Which frozen encoder to build and where its weights come from."""

    kind: str = "minilm"
    """One of ``clip``, ``clap``, ``minilm``, ``wordllama``."""

    name: str | None = None
    """clip: open_clip architecture (``"ViT-B-32"``); clap: hub name (``"laion/clap-htsat-unfused"``).
    Unused by minilm and wordllama."""

    pretrained: str | None = None
    """clip only: open_clip pretrained tag (``"laion2b_s34b_b79k"``); may download on first use."""

    path: str | None = None
    """Local weights. clip: checkpoint file (with ``name`` or ``model_cfg``) or open_clip folder;
    clap: ``save_pretrained`` folder; minilm: sentence-model folder; wordllama: folder with
    ``weights/`` and ``tokenizers/``. ``None``: the packaged model (minilm, wordllama). Must exist."""

    model_cfg: dict[str, Any] | None = None
    """clip only: explicit open_clip architecture dict (random weights unless ``path`` is given)."""

    space: str | None = None
    """Name of the embedding space; ``None``: the encoder's default (clip, clap, minilm, wordllama)."""

    dim: int | None = None
    """wordllama only: Matryoshka truncation (64, 128 or 256); ``None``: 256."""

    device: str = "cpu"
    """Torch device the encoder lives on: ``cpu``, ``cuda`` or ``cuda:<index>``."""

    precision: str = "bf16"
    """Autocast dtype on CUDA: ``bf16``, ``fp16`` or ``fp32`` (CPU always runs float32)."""

    batch_size: int | None = None
    """Items per forward pass when a call gives none; ``None``: 64 for text/image, 16 for audio."""

    def validate(self) -> None:
        owner = type(self).__name__
        require(self.kind in KINDS, owner, "kind", self.kind, f"use one of {list(KINDS)}")
        require(
            self.precision in ("bf16", "fp16", "fp32"),
            owner,
            "precision",
            self.precision,
            "use 'bf16', 'fp16' or 'fp32'",
        )
        require(
            self.device == "cpu" or self.device.startswith("cuda"),
            owner,
            "device",
            self.device,
            f"use {DEVICES_HINT}",
        )
        require(
            self.batch_size is None or self.batch_size >= 1,
            owner,
            "batch_size",
            self.batch_size,
            "use a positive integer or null",
        )
        if self.kind != "clip":
            for field in ("pretrained", "model_cfg"):
                require(
                    getattr(self, field) is None,
                    owner,
                    field,
                    getattr(self, field),
                    f"only kind='clip' uses it; remove it for kind={self.kind!r}",
                )
        if self.kind != "wordllama":
            require(
                self.dim is None,
                owner,
                "dim",
                self.dim,
                "only kind='wordllama' takes a truncation dim; remove it",
            )
        if self.kind == "clip":
            require(
                self.model_cfg is not None or self.pretrained is not None or self.path is not None,
                owner,
                "pretrained",
                self.pretrained,
                "kind='clip' needs weights: set pretrained (a tag), path (a checkpoint), or model_cfg (random init)",
            )
        if self.kind == "clap":
            require(
                self.name is not None or self.path is not None,
                owner,
                "name",
                self.name,
                "kind='clap' needs name (a hub name such as 'laion/clap-htsat-unfused') or path (a local folder)",
            )
        if self.path is not None and not Path(self.path).expanduser().exists():
            raise ConfigError(
                f"{owner}.path={self.path!r} does not exist; point it at the local {self.kind} weights, "
                f"or set path to null"
                + (" to use the packaged model" if self.kind in ("minilm", "wordllama") else "")
            )


def build_encoder(cfg: EncoderConfig | dict[str, Any]) -> FrozenEncoder:
    """Build the frozen encoder ``cfg`` describes (a config or a plain dict), on ``cfg.device``."""
    if not isinstance(cfg, EncoderConfig):
        cfg = EncoderConfig.from_dict(cfg)
    else:
        cfg.validate()
    common = {"device": cfg.device, "precision": cfg.precision, "batch_size": cfg.batch_size}
    if cfg.space is not None:
        common["space"] = cfg.space
    if cfg.kind == "clip":
        from .clip import OpenClipEncoder

        return OpenClipEncoder(
            model_name=cfg.name or ("ViT-B-32" if cfg.model_cfg is None else None),
            pretrained=cfg.pretrained,
            path=cfg.path,
            model_cfg=cfg.model_cfg,
            **common,
        )
    if cfg.kind == "clap":
        from .clap import ClapEncoder

        return ClapEncoder(name_or_path=Path(cfg.path) if cfg.path is not None else cfg.name, **common)
    if cfg.kind == "minilm":
        from .minilm import MiniLMEncoder

        return MiniLMEncoder(path=cfg.path, **common)
    from .wordllama import WordLlamaEncoder

    return WordLlamaEncoder(path=cfg.path, dim=cfg.dim or 256, **common)
