"""The docstring demo corpus: deterministic extraction, documented fields, cache, shards."""

from __future__ import annotations

import hashlib
import importlib
import time

import numpy as np
import pytest
import torch

from data_modules import ReplayConfig, StreamReplayDataset, write_blocks
from luma_pl.corpus import (
    DemoCorpusConfig,
    DocstringCorpusConfig,
    build_demo_corpus,
    event_arrays,
    extract_docstrings,
    first_paragraph,
)
from luma_pl.threads import limit_cpu_threads

limit_cpu_threads()
NUMPY = DocstringCorpusConfig(packages=("numpy",), max_items=60)


def test_first_paragraph_skips_signature_lines():
    doc = "add(x1, x2, /, out=None)\n\nAdd arguments\n   element-wise.\n\nParameters\n----------\n"
    assert first_paragraph(doc) == "Add arguments element-wise."
    assert first_paragraph(None) == "" and first_paragraph("   ") == ""


def test_numpy_extraction_deterministic_with_documented_fields():
    a = extract_docstrings(NUMPY)
    b = extract_docstrings(NUMPY)
    assert a == b  # same environment, same corpus
    n = len(a.item_text)
    assert n == 60 and len(set(a.item_text)) == n  # deduped item texts
    assert len(a.item_topic) == len(a.item_key) == n
    assert len(a.query_text) == len(a.query_item) >= n  # aliases add queries, not items
    assert all(t == "numpy" or t.startswith("numpy.") for t in a.item_topic)
    assert a.versions == {"numpy": np.__version__}
    # topic by topic: each topic's items are one contiguous run, topics in sorted order
    runs = [t for i, t in enumerate(a.item_topic) if i == 0 or a.item_topic[i - 1] != t]
    assert runs == sorted(set(runs))
    # a query's relevant item is the one with its object's exact first paragraph
    for j in range(0, len(a.query_text), 7):
        qual = a.query_text[j].split("(")[0]
        mod, name = qual.rsplit(".", 1)
        obj = getattr(importlib.import_module(mod), name)
        assert a.item_text[a.query_item[j]] == first_paragraph(obj.__doc__)
    assert sorted(set(a.query_item)) == list(range(n))  # every item has a query


def test_config_errors_name_field():
    with pytest.raises(ValueError, match="max_items=0"):
        DocstringCorpusConfig.from_dict({"packages": ["numpy"], "max_items": 0})
    with pytest.raises(ValueError, match="unknown key"):
        DocstringCorpusConfig.from_dict({"pakages": ["numpy"]})


class _HashEncoder:
    """Stand-in for a frozen text encoder: deterministic unit vectors, counts calls."""

    def __init__(self, space: str, dim: int):
        self.space, self.dim, self.calls = space, dim, 0

    def encode_text(self, texts, batch_size=64):
        self.calls += 1
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dim))
        return torch.nn.functional.normalize(torch.tensor(np.array(rows), dtype=torch.float32), dim=-1)


def test_demo_corpus_cached_and_replayable(tmp_path):
    cfg = DemoCorpusConfig(corpus=NUMPY, cache_dir=str(tmp_path / "cache"))
    encs = {"minilm": _HashEncoder("minilm", 384), "wordllama": _HashEncoder("wordllama", 256)}
    first = build_demo_corpus(cfg, encoders=encs)
    assert not first.report["cache_hit"] and encs["minilm"].calls == 2
    n, q = first.report["items"], first.report["queries"]
    assert first.emb["minilm"].shape == (n, 384) and first.emb["query_wordllama"].shape == (q, 256)
    t0 = time.perf_counter()
    second = build_demo_corpus(cfg, encoders=encs)
    assert second.report["cache_hit"] and encs["minilm"].calls == 2 and time.perf_counter() - t0 < 5
    np.testing.assert_array_equal(second.emb["wordllama"], first.emb["wordllama"])
    ev = event_arrays(second)
    assert set(ev["emb"]) == {"minilm", "wordllama", "query_minilm", "query_wordllama"}
    # each event's query embedding is the embedding of its own query text
    j = second.texts.item_query()[5]
    np.testing.assert_array_equal(ev["emb"]["query_minilm"][5], second.emb["query_minilm"][j])
    assert ev["texts"]["query.txt"][5] == second.texts.query_text[j]
    write_blocks(tmp_path / "shards", keys=ev["keys"], ts=ev["ts"], emb=ev["emb"], topics=ev["topics"],
                 texts=ev["texts"], block_events=16, events_per_shard=32)
    batches = list(StreamReplayDataset(ReplayConfig(root=str(tmp_path / "shards"), batch_size=8)))
    assert [t for b in batches for t in b["media"]["txt"]] == second.texts.item_text
    assert batches[0]["emb"]["minilm"].shape == (8, 384)
    assert torch.allclose(batches[0]["emb"]["wordllama"].norm(dim=1), torch.ones(8))
