"""CLAP audio + text encoder (transformers ``ClapModel``), frozen and deterministic.

Two traps in the stock ``ClapFeatureExtractor`` that this wrapper removes:

- Its default ``truncation="fusion"`` makes 4-channel spectrograms (a global view + 3 crops);
  a non-fusion checkpoint such as ``laion/clap-htsat-unfused`` expects 1 channel and fails. We
  pick the truncation from ``model.config.audio_config.enable_fusion``: ``"fusion"`` when the
  model has the fusion branch, ``"rand_trunc"`` otherwise.
- Both truncations are random on long audio (``rand_trunc`` crops at a random offset; ``fusion``
  picks random crops, and when no clip is longer than the window it marks a random one of the
  batch as "longer"). We crop every wave to the model's window ourselves (from the start, or the
  centre with ``crop="centre"``), so the extractor never truncates, and we pass ``is_longer=False``
  for every clip (true after our crop). Same wave -> same vector, whatever the batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

from .base import FrozenEncoder, existing_path

CROPS = ("start", "centre")


def _features(out) -> torch.Tensor:
    # transformers >= 5 returns a ModelOutput whose pooler_output holds the projected vectors;
    # 4.x returned the tensor itself.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClapEncoder(FrozenEncoder):
    """CLAP text + audio towers. Output ``(N, projection_dim)`` unit rows.

    Args:
        name_or_path: a hub name (``"laion/clap-htsat-unfused"``; downloads on first use unless
            cached) or a local folder holding the model, tokenizer and feature extractor files
            (loaded with ``local_files_only=True``).
        crop: where to cut audio longer than the window: ``"start"`` (first ``audio_window_s``
            seconds) or ``"centre"``.
        space: name of the embedding space.
    """

    modalities = frozenset({"text", "audio"})

    def __init__(
        self,
        name_or_path: str | os.PathLike = "laion/clap-htsat-unfused",
        crop: str = "start",
        space: str = "clap",
        device: str | torch.device = "cpu",
        precision: str = "bf16",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(precision=precision, batch_size=batch_size)
        if crop not in CROPS:
            raise ValueError(f"crop={crop!r} is invalid; use one of {CROPS}")
        source = str(name_or_path)
        # A Path object, an existing folder, or anything spelled like a filesystem path is local;
        # the rest is a hub name ("org/name").
        local = (
            isinstance(name_or_path, Path)
            or Path(source).expanduser().exists()
            or source.startswith((".", "/", "~"))
        )
        if local:
            source = str(
                existing_path(
                    name_or_path,
                    "name_or_path",
                    "give a local CLAP folder (save_pretrained output) or a hub name such as 'laion/clap-htsat-unfused'",
                )
            )
        self.space = space
        self.crop = crop
        self.model = ClapModel.from_pretrained(source, local_files_only=local)
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        self.feature_extractor = ClapFeatureExtractor.from_pretrained(source, local_files_only=local)

        self.fusion = bool(self.model.config.audio_config.enable_fusion)
        self.truncation = "fusion" if self.fusion else "rand_trunc"
        self.dim = int(self.model.config.projection_dim)
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.audio_window_s = float(self.feature_extractor.max_length_s)
        self.window_samples = int(self.feature_extractor.nb_max_samples)
        # RoBERTa positions start at pad_token_id + 1, so a text may hold max_position_embeddings
        # - (pad_token_id + 1) tokens (512 for laion CLAP); longer inputs would index past the table.
        text_cfg = self.model.config.text_config
        limit = int(text_cfg.max_position_embeddings) - (int(text_cfg.pad_token_id or 0) + 1)
        self.max_text_tokens = int(min(self.tokenizer.model_max_length, limit))
        self.to(device)
        self.freeze()

    def encode_audio(self, waves, batch_size: int | None = None) -> torch.Tensor:
        """``waves``: N mono arrays at ``sample_rate`` Hz -> ``(N, dim)`` float32, unit rows.

        Audio longer than ``audio_window_s`` is cropped (``crop``); shorter audio is padded the
        way the feature extractor is configured to (``repeatpad`` for laion checkpoints).
        """
        checked = []
        for i, w in enumerate(waves):  # validated up front so the index is global, not per chunk
            arr = np.asarray(w, dtype=np.float32)
            if arr.ndim != 1 or arr.size == 0:
                raise ValueError(
                    f"waves[{i}] has shape {arr.shape}; give a non-empty mono 1-D array at {self.sample_rate} Hz "
                    f"(luma_pl.media.load_audio(path, encoder.sample_rate) makes one)"
                )
            if not np.isfinite(arr).all():
                raise ValueError(f"waves[{i}] contains NaN or inf samples; clean or drop it")
            checked.append(self._crop(arr))
        return super().encode_audio(checked, batch_size)

    def _crop(self, wave: np.ndarray) -> np.ndarray:
        extra = wave.shape[0] - self.window_samples
        if extra <= 0:
            return wave
        start = 0 if self.crop == "start" else extra // 2
        return wave[start : start + self.window_samples]

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        out = self.model.get_text_features(
            input_ids=batch["input_ids"].to(self.device),
            attention_mask=batch["attention_mask"].to(self.device),
        )
        return _features(out)  # (b, dim)

    def _encode_audio(self, waves: list[np.ndarray]) -> torch.Tensor:
        feats = self.feature_extractor(
            waves, sampling_rate=self.sample_rate, truncation=self.truncation, return_tensors="pt"
        )
        mels = feats["input_features"].to(self.device)  # (b, 1 or 4, frames, mel_bins)
        # Every wave fits the window after _crop, so none is "longer"; overriding the extractor's
        # random pick keeps fusion models deterministic and batch-independent.
        is_longer = torch.zeros(mels.shape[0], 1, dtype=torch.bool, device=self.device)
        out = self.model.get_audio_features(input_features=mels, is_longer=is_longer)
        return _features(out)  # (b, dim)
