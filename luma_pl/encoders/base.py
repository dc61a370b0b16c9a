"""The one interface every frozen encoder implements.

An encoder maps a batch of inputs of one modality to L2-normalised float32 vectors of size
``dim`` (shape ``(N, dim)``). Encoders are frozen: parameters have ``requires_grad=False``, the
module stays in ``eval()`` mode even if a parent module calls ``.train()``, and encoding runs
under ``torch.inference_mode``. On CUDA, encoding runs under autocast in ``precision``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

MODALITIES = ("text", "image", "audio")


class ModalityNotSupported(NotImplementedError):
    """Raised when an encoder is asked for a modality it does not have."""


class FrozenEncoder(nn.Module):
    """Base class. Subclasses set ``space``, ``dim``, ``modalities`` and implement ``_encode_<m>``.

    Attributes:
        space: name of the embedding space (used as the ``<space>.npy`` entry name in shards).
        dim: output dimension.
        modalities: the subset of ``MODALITIES`` this encoder supports.
        sample_rate: audio sample rate in Hz the model expects (audio encoders only).
        audio_window_s: audio window in seconds the model sees (audio encoders only).
    """

    space: str = ""
    dim: int = 0
    modalities: frozenset[str] = frozenset()
    sample_rate: int | None = None
    audio_window_s: float | None = None

    # Default batch size per modality when neither the call nor the constructor gives one: audio
    # towers see 10 s spectrograms, so they get smaller batches.
    DEFAULT_BATCH_SIZE = {"text": 16, "image": 64, "audio": 16}
    """Items per forward pass when the caller gives none. Text: 16 length-sorted texts (on 1 CPU
    thread, MiniLM over 256 docstrings: 137 texts/s at 16, 101 at 64, 69 one per pass)."""
    GPU_BATCH_SIZE = {"text": 128, "image": 64, "audio": 16}
    """The same on an accelerator, where a pass costs little more for more rows (not measured here:
    no GPU has run this code)."""

    def __init__(self, precision: str = "bf16", batch_size: int | None = None) -> None:
        super().__init__()
        if precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"precision={precision!r} is invalid: use 'bf16', 'fp16' or 'fp32'")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1 (or None for the per-modality default)")
        self.precision = precision
        self.batch_size = batch_size

    # --- frozenness -------------------------------------------------------------------------
    def freeze(self) -> FrozenEncoder:
        """Turn off gradients and put every submodule in eval mode. Call at the end of ``__init__``."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        return self

    def train(self, mode: bool = True) -> FrozenEncoder:  # noqa: ARG002 - frozen: always eval
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def _autocast(self):
        dev = self.device
        if dev.type == "cuda" and self.precision != "fp32":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    # --- public API ----------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """``texts``: N non-empty strings -> ``(N, dim)`` float32, unit rows, on ``self.device``."""
        if isinstance(texts, str):  # a bare string would be encoded character by character
            raise ValueError("encode_text expects a list of strings, got a single str; wrap it: [text]")
        texts = list(texts)
        check_texts(texts)
        return self._encode("text", texts, batch_size)

    def encode_image(self, images: Sequence, batch_size: int | None = None) -> torch.Tensor:
        """``images``: N PIL images -> ``(N, dim)`` float32, unit rows."""
        return self._encode("image", list(images), batch_size)

    def encode_audio(self, waves: Sequence, batch_size: int | None = None) -> torch.Tensor:
        """``waves``: N mono float32 arrays at ``sample_rate`` -> ``(N, dim)`` float32, unit rows."""
        return self._encode("audio", list(waves), batch_size)

    def _encode(self, modality: str, items: list, batch_size: int | None) -> torch.Tensor:
        if modality not in self.modalities:
            raise ModalityNotSupported(
                f"{type(self).__name__} (space {self.space!r}) has no {modality} tower; "
                f"it supports {sorted(self.modalities)}"
            )
        if batch_size is None:
            batch_size = self.batch_size or (self.DEFAULT_BATCH_SIZE[modality] if self.device.type == "cpu"
                                             else self.GPU_BATCH_SIZE[modality])
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        fn = getattr(self, f"_encode_{modality}")
        if not items:
            return torch.zeros(0, self.dim, dtype=torch.float32, device=self.device)
        # texts in length order: a chunk pads to its longest text, so similar lengths waste little
        # (256 docstrings, MiniLM, 1 CPU thread: 1.6x the throughput of file order in chunks of 64)
        order = sorted(range(len(items)), key=lambda i: len(items[i])) if modality == "text" else None
        ordered = [items[i] for i in order] if order is not None else items
        outs = []
        with torch.inference_mode(), self._autocast():
            for chunk in _chunks(ordered, batch_size):
                out = fn(chunk)  # (b, dim), any float dtype
                outs.append(torch.nn.functional.normalize(out.float(), dim=-1))
        out = torch.cat(outs, dim=0)
        if order is not None:
            back = torch.empty(len(order), dtype=torch.long)
            back[torch.tensor(order)] = torch.arange(len(order))
            out = out[back.to(out.device)]
        return out

    # Subclasses implement the ones they support; each returns an un-normalised (b, dim) tensor.
    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def _encode_image(self, images: list) -> torch.Tensor:
        raise NotImplementedError

    def _encode_audio(self, waves: list) -> torch.Tensor:
        raise NotImplementedError


def check_texts(texts: list) -> None:
    """Raise ``ValueError`` naming the first index whose item is not a non-blank ``str``.

    An empty string has no tokens to pool (MiniLM/WordLlama would divide by zero, CLIP would embed
    only the start/end tokens), so it is refused rather than silently embedded.
    """
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is a {type(t).__name__}, not a str; pass strings only")
        if not t.strip():
            raise ValueError(f"texts[{i}] is empty or blank ({t!r}); drop it or give it some text")


def existing_path(path: str | os.PathLike, argument: str, fix: str) -> Path:
    """``Path(path)`` if it exists, else ``FileNotFoundError`` naming the argument, path and fix."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{argument}={str(path)!r} does not exist; {fix}")
    return p


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
