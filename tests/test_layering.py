"""The package's structure, read from its imports (every import, at module level or inside a function):
no import circle among retromem's modules, data/ imports nothing above it, and no library module
imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import retromem

ROOT = Path(retromem.__file__).parent
#: Packages a package may import (besides itself and the top-level modules: errors, io, options, ...).
ALLOWED = {
    "data": set(),
    "index": {"data"},
    "retrieve": {"data", "index"},
    "pretrain": {"data", "index", "retrieve"},
    "eval": {"data", "index", "retrieve"},
    "read": {"data", "index", "retrieve", "pretrain", "eval"},
    "cli": {"data", "index", "retrieve", "pretrain", "eval", "read"},
}
#: Top-level modules that sit above data/ (they name passages and data set folders); the other top-level
#: modules (errors, io, options, device, model_paths, ...) import no package and every package may use them.
TOP_ALLOWED = {"retromem.artifacts": {"data"}, "retromem.workdir": {"data"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """The retromem modules ``path`` imports (``from retromem.x import y`` counts ``retromem.x.y`` when that is
    a module, else ``retromem.x``); imports under ``if TYPE_CHECKING:`` are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("retromem"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("retromem"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}
GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}


def test_there_is_no_import_circle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()) else None


def test_each_package_imports_only_the_layers_below_it():
    wrong = []
    for module, targets in GRAPH.items():
        own = _package(module)
        for target in targets:
            other = _package(target)
            if other is None or other == own:
                continue
            allowed = TOP_ALLOWED.get(module, set()) if own is None else ALLOWED[own]
            if other not in allowed:
                wrong.append(f"{module} imports {target}")
        if own == "data":
            wrong += [f"{module} imports {t}, which is above data/" for t in targets if t in TOP_ALLOWED]
    assert not wrong, "\n".join(sorted(wrong))


def test_the_graph_sees_the_imports():
    """The checks above would pass on an empty graph: make sure it holds edges we know, of every kind."""
    assert "retromem.artifacts" in GRAPH["retromem.index.embeddings"]
    assert "retromem.cli.common" in GRAPH["retromem.cli.encode"]
    assert "retromem.index.encoder" in GRAPH["retromem.cli.common"]                  # function-level import
