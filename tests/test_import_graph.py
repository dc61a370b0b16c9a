"""The project's module import graph has no cycles (issue 12: shard_format <-> shard_reader and
memory/policy <-> memory/tiered were circles). Module-level imports only: an import inside a
function or under ``if TYPE_CHECKING`` runs later or never; package ``__init__`` re-exports are not
edges (they import their submodules by design)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("luma_pl", "callbacks", "data_modules")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, name: str, is_pkg: bool) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    for node in tree.body:  # module level only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes = [node] if not isinstance(node, (ast.If, ast.Try)) else list(ast.walk(node))
        for n in nodes:
            if isinstance(n, ast.Import):
                out |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom):
                mod = n.module or ""
                if n.level:
                    mod = ".".join(base[: len(base) - (n.level - 1)] + ([mod] if mod else []))
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in n.names}  # `from pkg import submodule`
    return out


def _graph() -> dict[str, set[str]]:
    files = {p: _module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules = {name for p, name in files.items() if p.name != "__init__.py"}
    return {name: {m for m in _top_level_imports(p, name, False) if m in modules and m != name}
            for p, name in files.items() if p.name != "__init__.py"}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_the_project_has_no_import_cycle():
    graph = _graph()
    assert len(graph) > 50  # the walk found the project
    assert "data_modules.safe_tar" in graph["data_modules.shard_reader"]
    assert "luma_pl.memory.tiers" in graph["luma_pl.memory.policy"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
