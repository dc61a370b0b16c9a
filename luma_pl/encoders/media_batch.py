"""Raw media of one replay batch through a frozen encoder: the one on-the-fly encoding step that
the bridge modules (training) and the evaluator (replay) share.

A replay batch carries decoded media per extension (``batch["media"][ext]``: B payloads, None where
absent; audio as ``(wave, sample_rate)``). ``encode_media`` encodes the present ones in one call
(the encoder batches them per its ``batch_size``) and returns ``(emb (B, dim), has (B,))`` with
zero rows where the payload is absent.
"""

from __future__ import annotations

import torch

MEDIA_MODALITY = {"txt": "text", "jpg": "image", "png": "image", "flac": "audio", "wav": "audio"}
"""Media extension of a replay batch -> the encoder modality that embeds it."""


def encode_media(payloads: list, ext: str, encoder, dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    if ext not in MEDIA_MODALITY:
        raise ValueError(f"media ext={ext!r} cannot be encoded; use one of {sorted(MEDIA_MODALITY)}")
    has = torch.tensor([x is not None for x in payloads], dtype=torch.bool, device=device)
    emb = torch.zeros(len(payloads), dim, device=device)
    items = [x[0] if MEDIA_MODALITY[ext] == "audio" else x for x in payloads if x is not None]  # audio: (wave, sr)
    if items:
        emb[has] = getattr(encoder, f"encode_{MEDIA_MODALITY[ext]}")(items).to(emb.device, emb.dtype)
    return emb, has
