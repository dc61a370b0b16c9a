"""Tiny randomly-initialised real CLIP (open_clip) and CLAP (transformers) models, built offline.

Shared by the encoder tests and the shard-writer tests: real classes and code paths, small sizes,
no download. The CLAP tokenizer is a word-level ``tokenizers`` model built in memory.
"""

from __future__ import annotations

import torch

TINY_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLAP_WORDS = "a the dog cat barks meows sound of piano music rain bird sings loud quiet".split()


def tiny_clap_folder(folder, fusion: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        PreTrainedTokenizerFast,
    )

    # A word-level tokenizer built offline stands in for CLAP's RoBERTa BPE; ids 0-4 mirror RoBERTa's
    # special tokens (<s>=0, <pad>=1, </s>=2) because CLAP's text tower offsets positions by pad id.
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *CLAP_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=32,
    )
    config = ClapConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=40,
            pad_token_id=1,
            type_vocab_size=1,
        ),
        audio_config=dict(
            spec_size=64,
            num_mel_bins=16,
            window_size=4,
            depths=[1, 1],
            num_attention_heads=[2, 2],
            patch_embeds_hidden_size=16,
            hidden_size=32,
            enable_fusion=fusion,
            fusion_type="aff_2d" if fusion else None,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = ClapModel(config).eval()
    # The extractor keeps its stock truncation='fusion' even for the non-fusion model: the trap the
    # encoder must undo. 1 s windows keep the spectrograms small.
    extractor = ClapFeatureExtractor(feature_size=16, max_length_s=1)
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


