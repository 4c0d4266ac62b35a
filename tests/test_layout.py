"""The package's layout: no import cycle between rurk's own modules, not even one hidden by a function-local import.

A local import that breaks a cycle at import time still ties the two modules together (neither can be read,
tested or moved alone); shared pieces are moved down instead (e.g. :mod:`rurk.report.tables`, :mod:`rurk.run.dryrun`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "rurk"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The rurk modules one import statement names (``from .x import y`` is module ``x.y`` when that is a module,
    else ``x``)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = set()
    for name in names:
        if name.split(".")[0] != "rurk":
            continue
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules and name != module:
            out.add(name)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the rurk modules it imports anywhere in its body (module level or inside functions)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _targets(module, path.name == "__init__.py", node, set(files))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycle_including_local_imports():
    graph = import_graph()
    assert "rurk.report.write" in graph and "rurk.report.tables" in graph["rurk.report.write"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_local_imports_count(tmp_path):
    """The checker sees an import inside a function (the kind that used to hide report <-> attack_report)."""
    pkg = tmp_path / "rurk"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")
    assert find_cycle(import_graph(pkg)) == ["rurk.a", "rurk.b", "rurk.a"]
    (pkg / "b.py").write_text("def f():\n    import math\n")
    assert find_cycle(import_graph(pkg)) is None


@pytest.mark.parametrize("text", ["from . import a\n", "import rurk.a\n", "from rurk.a import g\n"])
def test_import_spellings(tmp_path, text):
    pkg = tmp_path / "rurk"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def g():\n    from .b import f\n")
    (pkg / "b.py").write_text(text)
    assert find_cycle(import_graph(pkg)) == ["rurk.a", "rurk.b", "rurk.a"]


#: The flow of docs/design.md as the folders show it, lowest first: a package may import only from packages at its
#: own level or below (the foundations — config, store, train, torchutil, ... — and data/models/perturb are below all).
LAYERS = (("rurk.data", "rurk.models", "rurk.perturb"), ("rurk.audit",), ("rurk.methods",), ("rurk.pipeline",),
          ("rurk.report",), ("rurk.run",), ("rurk.cli",))


def test_packages_import_only_downstream_of_the_flow():
    """audit never imports methods, run, report or cli; methods never run, report or cli; report never run or cli;
    run never cli — data flows one way, and the folder names say which way."""
    def layer(module: str) -> int | None:
        return next((i for i, group in enumerate(LAYERS) for g in group if module == g or module.startswith(g + ".")),
                    None)

    graph = import_graph()
    back = [(m, t) for m, targets in graph.items() for t in targets
            if layer(m) is not None and layer(t) is not None and layer(t) > layer(m)]
    assert back == [], back
    assert {"rurk.audit.kernel", "rurk.methods.rurk", "rurk.report.write", "rurk.run.experiment",
            "rurk.cli.commands"} <= set(graph)  # the folders exist as the picture draws them
