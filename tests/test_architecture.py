"""The package's architecture, checked from its source: three wings whose imports point one way
(tools -> articles -> library), no import circles, and a README map and package docstrings that
name every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "funcmod"
# A wing may import only wings of lower rank; articles and corpus are both example wings.
WINGS = {"core": 0, "articles": 1, "corpus": 1, "tools": 2}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else "core"


def imports(module: str) -> set[str]:
    """Every funcmod module ``module`` imports, at module level or inside a function."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                )
                base = base.rstrip(".")
            # ``from pkg import child`` runs ``pkg/__init__.py`` too: an edge to both.
            names = [base] + [
                f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # funcmod.x.y where y is a name in module x
                name = name.rpartition(".")[0]
            if name.startswith("funcmod") and name != module:
                found.add(name)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_the_graph_sees_the_whole_package():
    assert len(MODULES) >= 30, sorted(MODULES)
    assert sum(len(v) for v in GRAPH.values()) >= 50  # an empty graph would pass everything below
    assert "funcmod.articles.models" in GRAPH["funcmod.articles.catalog"]
    assert "funcmod.nn.conv" in GRAPH["funcmod.nn.layers"]  # a function-level import counts too


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_downwards(module):
    """The library never imports the examples or the tools; the examples never import a tool.
    Package ``__init__`` files are the public surface of their wing and follow the same rule."""
    upward = sorted(m for m in GRAPH[module] if WINGS[wing(m)] > WINGS[wing(module)])
    assert not upward, f"{module} ({wing(module)}) imports {upward}"


def test_no_import_circles():
    """Depth-first search over every funcmod import; a back edge is a circle."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                circles.append([*path[path.index(n) :], n] if n in path else [m, n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    # A package __init__ re-exporting its own children is the one allowed pattern: Python
    # imports the package before the child, so child -> parent edges are never written.
    assert not circles, circles


def test_readme_map_names_every_module():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    section = section.split("src/funcmod/", 1)[1].split("\ncomparisons/", 1)[0]
    listed = set(re.findall(r"\b([\w/]+\.py)\b", section))
    actual = {str(p.relative_to(PACKAGE)) for p in MODULES.values()}
    assert actual - listed == set(), f"missing from the README's layout map: {actual - listed}"
    assert listed - actual == set(), (
        f"the README's layout map names missing files: {listed - actual}"
    )


@pytest.mark.parametrize(
    "package", sorted(m for m, p in MODULES.items() if p.name == "__init__.py")
)
def test_package_docstrings_name_their_modules(package):
    import importlib

    doc = importlib.import_module(package).__doc__ or ""
    children = sorted(
        m.rpartition(".")[2] for m in MODULES if "." in m and m.rpartition(".")[0] == package
    )
    assert children, package
    missing = [c for c in children if not re.search(rf"\b{c}\b", doc)]
    assert not missing, f"{package}'s docstring does not name {missing}"


def test_modules_stay_small():
    """A module holds one kind of thing; past about 500 lines it is usually holding two."""
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    assert max(sizes.values()) <= 520, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
