"""The project's modules import each other without a cycle, at module level or inside functions.

The import graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` anywhere in a module, relative imports resolved, and ``from pkg import name``
counted as an import of ``pkg.name`` when that is a module of the project.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Collection

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("paramcrop", "studies", "analysis")
TOP_MODULES = ("cli",)


def project_modules(root: Path = REPO) -> dict[str, Path]:
    """Module name -> source file, for every module of :data:`PACKAGES` and :data:`TOP_MODULES`
    (a package is named by its ``__init__.py``)."""
    modules = {name: root / f"{name}.py" for name in TOP_MODULES}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(module: str, path: Path, modules: Collection[str]) -> set[str]:
    """The project modules that ``module`` (source ``path``) imports anywhere in its body: ``import
    a.b`` names ``a.b``; ``from pkg import name`` names the submodule ``pkg.name`` where there is one,
    else ``pkg`` (relative imports resolved against ``module``'s package)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return {name for name in names if name in modules and name != module}


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the project modules it imports (:func:`imports_of`)."""
    modules = project_modules(root)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each a cycle or several
    intertwined ones), sorted, by Tarjan's algorithm (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return sorted(cycles)


def test_the_cycle_finder_finds_a_hand_made_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d", "f"}, "f": {"e"}, "g": {"g"}}
    assert find_cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_resolves_relative_and_submodule_imports(tmp_path):
    (tmp_path / "cli.py").write_text("import paramcrop.b\n")
    package = tmp_path / "paramcrop"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from paramcrop.a import x\n")
    (package / "a.py").write_text("def f():\n    from . import b\n")
    (package / "b.py").write_text("from .sub import c\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from ..a import f\nfrom paramcrop import sub\n")
    for name in ("studies", "analysis"):
        (tmp_path / name).mkdir()
    graph = import_graph(tmp_path)
    assert graph == {"cli": {"paramcrop.b"}, "paramcrop": {"paramcrop.a"}, "paramcrop.a": {"paramcrop.b"},
                     "paramcrop.b": {"paramcrop.sub.c"}, "paramcrop.sub": set(),
                     "paramcrop.sub.c": {"paramcrop.a", "paramcrop.sub"}}
    assert find_cycles(graph) == [["paramcrop.a", "paramcrop.b", "paramcrop.sub.c"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles among: " + "; ".join(" <-> ".join(c) for c in cycles)
