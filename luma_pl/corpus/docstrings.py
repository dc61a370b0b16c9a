"""Extract the demo corpus from the docstrings of installed scientific Python packages.

Item text = the first paragraph of a public function's or class's docstring (the sentence a user
would search for); query text = its qualified name and signature (what a user would type into a
code search). Topic = the public submodule it was found in; the stream visits topics one after
the other in sorted order, which gives a natural topic drift. Everything is sorted, so for a given
environment (same package versions) the corpus is identical run to run.

Identical item texts are merged into one item (re-exports and aliases share a docstring), so a
query's relevant set is exactly the one item with its function's text.

Walking is import-only: modules named like tests, setup scripts, ``__main__`` or private
(``_x``) are never imported; an import that fails (or calls ``sys.exit``) skips that module.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import io
import pkgutil
import re
import warnings
from dataclasses import dataclass, field

from luma_pl.configuration import StrictConfig, require

# Module name parts never imported: test suites, build/setup scripts, entry points, legacy shims.
SKIP_PARTS = frozenset({"tests", "test", "testing", "conftest", "setup", "__main__", "distutils",
                        "f2py", "benchmarks", "_bootstrap", "cli"})
_SIG_RE = re.compile(r"^[\w.]+\(.*\)")  # a first paragraph that is only a signature line (ufuncs)
_WS_RE = re.compile(r"\s+")


@dataclass
class DocstringCorpusConfig(StrictConfig):
    """What to extract."""

    packages: tuple[str, ...] = ("numpy", "scipy")
    """Top-level packages to walk; ones that are not installed are skipped (and reported)."""
    max_items: int | None = None
    """Keep at most this many items (the first in stream order); None keeps all."""
    max_modules_per_package: int | None = None
    """Walk at most this many public submodules per package (sorted); None walks all."""
    min_words: int = 4
    """Drop first paragraphs shorter than this many words (too vague to retrieve)."""
    max_chars: int = 600
    """Truncate item texts to this many characters (encoders see ~256 tokens anyway)."""

    def validate(self) -> None:
        if isinstance(self.packages, (list, str)):
            self.packages = (self.packages,) if isinstance(self.packages, str) else tuple(self.packages)
        require(len(self.packages) > 0, "DocstringCorpusConfig", "packages", self.packages,
                "list at least one installed package, e.g. ['numpy']")
        require(self.max_items is None or self.max_items > 0, "DocstringCorpusConfig", "max_items",
                self.max_items, "use a positive count or null for all")
        require(self.min_words >= 1, "DocstringCorpusConfig", "min_words", self.min_words, "use >= 1")
        require(self.max_chars >= 16, "DocstringCorpusConfig", "max_chars", self.max_chars, "use >= 16")


@dataclass
class DocstringCorpus:
    """Items (unique texts, stream order) and the queries that point at them."""

    item_text: list[str] = field(default_factory=list)
    """Item i's text (a docstring's first paragraph)."""
    item_topic: list[str] = field(default_factory=list)
    """Item i's topic: the submodule where it was first found."""
    item_key: list[str] = field(default_factory=list)
    """Item i's key: the qualified name where it was first found."""
    query_text: list[str] = field(default_factory=list)
    """Query j's text: qualified name + signature."""
    query_item: list[int] = field(default_factory=list)
    """Query j's relevant item index (its exact item text)."""
    versions: dict[str, str] = field(default_factory=dict)
    """Package -> installed version, the environment the corpus came from."""
    skipped_modules: list[str] = field(default_factory=list)
    """Modules whose import failed (name: error type)."""

    @property
    def topics(self) -> list[str]:
        return sorted(set(self.item_topic))

    def item_query(self) -> list[int]:
        """The first query of each item (the one stored with the item in a shard event)."""
        first = [-1] * len(self.item_text)
        for j, i in enumerate(self.query_item):
            if first[i] < 0:
                first[i] = j
        return first


def first_paragraph(doc: str | None, max_chars: int = 600) -> str:
    """The first paragraph that is prose (not a signature line), whitespace collapsed; '' if none."""
    if not isinstance(doc, str) or not doc:  # some classes expose __doc__ as a property object
        return ""
    for para in inspect.cleandoc(doc).split("\n\n"):
        text = _WS_RE.sub(" ", para).strip()
        if not text or (_SIG_RE.match(text) and text.endswith(")")):
            continue
        return text[:max_chars]
    return ""


def _public_modules(package: str, limit: int | None, skipped: list[str]) -> list[str]:
    try:
        pkg = _quiet_import(package)
    except BaseException as err:  # noqa: BLE001 - SystemExit etc. from a broken package
        skipped.append(f"{package}: {type(err).__name__}")
        return []
    names = [package]
    if hasattr(pkg, "__path__"):
        # walk_packages would import each package to recurse; list level by level instead, skipping
        # private/test names before anything is imported.
        frontier = [(pkg.__path__, package)]
        while frontier:
            path, prefix = frontier.pop()
            for info in pkgutil.iter_modules(path, prefix + "."):
                parts = info.name.split(".")
                if any(p.startswith("_") or p in SKIP_PARTS or "test" in p for p in parts[1:]):
                    continue
                names.append(info.name)
                if info.ispkg:
                    spec_path = _sub_path(info)
                    if spec_path:
                        frontier.append((spec_path, info.name))
    names = sorted(set(names))
    return names[:limit] if limit else names


def _sub_path(info: pkgutil.ModuleInfo) -> list[str] | None:
    finder = info.module_finder
    spec = finder.find_spec(info.name.rsplit(".", 1)[-1]) if hasattr(finder, "find_spec") else None
    return list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else None


def _quiet_import(name: str):
    """Import with warnings and stdout/stderr silenced (some modules print deprecation notes)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return importlib.import_module(name)


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def extract_docstrings(cfg: DocstringCorpusConfig | None = None) -> DocstringCorpus:
    """Walk ``cfg.packages`` and build the corpus (deterministic for one environment)."""
    cfg = cfg or DocstringCorpusConfig()
    cfg.validate()
    corpus = DocstringCorpus()
    index: dict[str, int] = {}  # item text -> item index
    seen_names: set[str] = set()
    for package in cfg.packages:
        try:
            corpus.versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            corpus.skipped_modules.append(f"{package}: not installed")
            continue
        for modname in _public_modules(package, cfg.max_modules_per_package, corpus.skipped_modules):
            try:
                module = _quiet_import(modname)
            except BaseException as err:  # noqa: BLE001 - a failing import only skips that module
                corpus.skipped_modules.append(f"{modname}: {type(err).__name__}")
                continue
            public = getattr(module, "__all__", None)
            names = sorted(n for n in (public if isinstance(public, (list, tuple)) else dir(module))
                           if isinstance(n, str) and not n.startswith("_"))
            for name in names:
                obj = getattr(module, name, None)
                if obj is None or inspect.ismodule(obj) or not callable(obj) or name in SKIP_PARTS:
                    continue
                qual = f"{modname}.{name}"
                if qual in seen_names:
                    continue
                seen_names.add(qual)
                text = first_paragraph(getattr(obj, "__doc__", None), cfg.max_chars)
                if len(text.split()) < cfg.min_words:
                    continue
                if text not in index:
                    if cfg.max_items is not None and len(corpus.item_text) >= cfg.max_items:
                        continue  # keep collecting queries for items already in
                    index[text] = len(corpus.item_text)
                    corpus.item_text.append(text)
                    corpus.item_topic.append(modname)
                    corpus.item_key.append(qual)
                corpus.query_text.append(qual + _signature(obj))
                corpus.query_item.append(index[text])
            if cfg.max_items is not None and len(corpus.item_text) >= cfg.max_items:
                return corpus
    return corpus
