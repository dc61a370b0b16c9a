"""The offline demo corpus: docstrings of installed scientific packages, embedded in two spaces.

- ``extract_docstrings(DocstringCorpusConfig)``: texts, topics, queries (no encoders, fast)
- ``build_demo_corpus(DemoCorpusConfig)``: + ``minilm``/``wordllama`` embeddings, cached on disk
- ``event_arrays(corpus)``: one event per item, ready for ``data_modules.write_blocks``
"""

from .demo import BUILDER_VERSION, DemoCorpus, DemoCorpusConfig, build_demo_corpus, env_hash, event_arrays
from .docstrings import DocstringCorpus, DocstringCorpusConfig, extract_docstrings, first_paragraph

__all__ = ["BUILDER_VERSION", "DemoCorpus", "DemoCorpusConfig", "DocstringCorpus", "DocstringCorpusConfig",
           "build_demo_corpus", "env_hash", "event_arrays", "extract_docstrings", "first_paragraph"]
