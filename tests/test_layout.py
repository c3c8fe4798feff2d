"""The package layout of ARCHITECTURE.md ("Layers"): imports point down only, and nothing forms a cycle.

Counted with `ast` over every module, function-local imports included, so a lazy import cannot hide an arrow.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("store", "matrix", "runner", "api", "knowngood", "migrations")
# What each package may import of the others. knowngood/ holds the entry points: it may import anything.
ALLOWED = {
    "store": set(),
    "matrix": {"store"},
    "runner": {"matrix", "store"},
    "api": {"matrix", "store"},
    "migrations": {"store"},
    "knowngood": {"store", "matrix", "runner", "api"},
}
# Run by path inside case environments: they import none of the service's packages (they load tables by path).
ISLANDS = (ROOT / "runner" / "worker", ROOT / "matrix" / "corpus")


def _imported_packages(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return [n for n in names if n in PACKAGES]


def _modules(package: str) -> list[Path]:
    return [p for p in sorted((ROOT / package).rglob("*.py")) if not any(p.is_relative_to(i) for i in ISLANDS)]


def package_graph() -> dict[tuple[str, str], int]:
    """(importer, imported) → number of import statements, across packages only."""
    arrows: Counter[tuple[str, str]] = Counter()
    for package in PACKAGES:
        for module in _modules(package):
            for imported in _imported_packages(module):
                if imported != package:
                    arrows[package, imported] += 1
    return dict(arrows)


def test_each_package_imports_only_the_layers_below_it() -> None:
    wrong = {arrow: n for arrow, n in package_graph().items() if arrow[1] not in ALLOWED[arrow[0]]}
    assert not wrong, f"imports against the layers (importer, imported): count = {wrong}"


def test_the_package_graph_has_no_cycle() -> None:
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for a, b in package_graph():
        graph[a].add(b)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, f"import cycle: {' → '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for package in PACKAGES:
        if package not in state:
            visit(package, [])


@pytest.mark.parametrize("island", ISLANDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_run_inside_case_environments_imports_no_service_package(island: Path) -> None:
    found = {str(m.relative_to(ROOT)): _imported_packages(m) for m in sorted(island.rglob("*.py"))}
    assert not {m: pkgs for m, pkgs in found.items() if pkgs}


def test_the_checker_sees_a_function_local_import(tmp_path: Path) -> None:
    # The walk must reach imports inside functions, or a lazy import would hide a cycle.
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from api import queries\n    import runner.uv\n")
    assert _imported_packages(module) == ["api", "runner"]
