"""WordLlama: static token embeddings + masked mean pooling, from the files inside the wheel.

``wordllama.WordLlama.load()`` is not used on purpose: it looks for the tokenizer under
``wordllama/tokenizer/`` while the 0.4.0.post1 wheel ships it under ``wordllama/tokenizers/``, and on a
miss it downloads from the Hugging Face hub. We read the two shipped files directly, the same two
that ``load()`` hands to ``WordLlamaInference``:

- ``wordllama/weights/l2_supercat_256.safetensors``: tensor ``embedding.weight``, ``(V, 256)``
- ``wordllama/tokenizers/l2_supercat_tokenizer_config.json``: a ``tokenizers`` JSON (Llama-2 BPE)

and redo ``WordLlamaInference.embed`` in torch (tokenise without special tokens, look up rows,
attention-mask mean, L2 norm), so the table is a buffer that follows ``.to(device)``.
The package is located with ``importlib`` without importing it: importing ``wordllama`` calls
``logging.basicConfig(level=INFO)`` as a side effect.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from .base import FrozenEncoder, existing_path

WEIGHTS_FILE = "weights/l2_supercat_256.safetensors"
TOKENIZER_FILE = "tokenizers/l2_supercat_tokenizer_config.json"
# Matryoshka-trained: the leading 64/128 dims of the 256-d table are themselves embeddings.
TRUNCATION_DIMS = (64, 128, 256)


def packaged_wordllama_dir() -> Path:
    """Folder of the installed ``wordllama`` package (without importing it)."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'wordllama' package is not installed; pip install 'wordllama>=0.4.0'")
    return Path(next(iter(spec.submodule_search_locations)))


class WordLlamaEncoder(FrozenEncoder):
    """Text encoder in the ``wordllama`` space (d=256 by default).

    Args:
        path: folder holding ``weights/`` and ``tokenizers/`` as in the wheel; default: the installed
            package.
        dim: keep the leading ``dim`` columns (64, 128 or 256; Matryoshka truncation).
        max_tokens: tokens kept per text (the package keeps all; we cap to bound memory on
            pathological inputs).
        space: name of the embedding space.
    """

    modalities = frozenset({"text"})

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        dim: int = 256,
        max_tokens: int = 2048,
        space: str = "wordllama",
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(precision=precision, batch_size=batch_size)
        if dim not in TRUNCATION_DIMS:
            raise ValueError(f"dim={dim} is not supported by WordLlama; use one of {TRUNCATION_DIMS}")
        root = (
            packaged_wordllama_dir()
            if path is None
            else existing_path(
                path,
                "path",
                "give the folder holding weights/ and tokenizers/ from the wordllama wheel, or None for the installed package",
            )
        )
        weights = existing_path(root / WEIGHTS_FILE, "weights file", "reinstall wordllama==0.4.0.post1")
        tok_file = existing_path(root / TOKENIZER_FILE, "tokenizer file", "reinstall wordllama==0.4.0.post1")

        table = load_file(str(weights))["embedding.weight"][:, :dim].float().contiguous()  # (V, dim)
        self.register_buffer("table", table, persistent=False)
        self.space = space
        self.dim = dim
        self.max_tokens = max_tokens
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.enable_padding()
        self.tokenizer.enable_truncation(max_tokens)
        self.to(device)
        self.freeze()

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        # The package tokenises without BOS/EOS; so do we, so our vectors equal its embed().
        enc = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long, device=self.table.device)  # (b, L)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.float32, device=ids.device)
        ids = ids.clamp_(0, self.table.shape[0] - 1)  # the package clamps ids beyond the table too
        tokens = self.table[ids]  # (b, L, dim)
        summed = (tokens * mask.unsqueeze(-1)).sum(dim=1)  # (b, dim)
        return summed / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
