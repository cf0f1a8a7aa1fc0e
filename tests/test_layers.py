"""The package's floors (docs/ARCHITECTURE.md), checked by parsing every import.

A module imports only from its own floor or lower ones, the modules import each other
without a cycle, and an import inside a function is allowed only for an optional heavy
dependency (each with a comment on its line or the line above).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
FLOORS = {  # package prefix → floor, from the ground up
    "memgen._version": 0, "memgen.errors": 0,
    "memgen.io": 1, "memgen.provenance": 1, "memgen.data": 1,
    "memgen.neighbours": 2,
    "memgen.metrics": 3,
    "memgen.memory": 4,
    "memgen.diffusion": 5,
    "memgen.probes": 6,
    "memgen.report": 7,
    "memgen.experiments": 8,
    "memgen.cli": 9, "memgen.__main__": 9,
    "memgen": 10,  # the public API (memgen/__init__.py)
}
# optional or heavy dependencies that may be imported where they are used
LAZY_ALLOWED = ("faiss", "ray", "diffusers", "prdc", "sklearn", "pandas", "memgen.metrics.lpips",
                "torch.distributed")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "memgen").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def floor(module: str) -> int:
    prefixes = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    if not prefixes:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS and ARCHITECTURE.md")
    return FLOORS[max(prefixes, key=len)]


def imports(path: Path, names: set[str]):
    """(target module, line, inside a function) for every import of a memgen module or of
    an optional dependency."""
    tree = ast.parse(path.read_text())
    functions = {id(n) for f in ast.walk(tree)
                 if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if n is not f}
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            yield target, node.lineno, id(node) in functions


def test_every_import_goes_down_or_sideways():
    found = modules()
    wrong = []
    for name, path in found.items():
        for target, line, _ in imports(path, set(found)):
            if target.split(".")[0] == "memgen" and target in found and floor(target) > floor(name):
                wrong.append(f"{name}:{line} imports {target} (floor {floor(target)} > "
                             f"{floor(name)})")
    assert wrong == []


def test_no_import_cycles():
    found = modules()
    graph = {name: {t for t, _, _ in imports(path, set(found)) if t in found and t != name}
             for name, path in found.items()}
    # a package's __init__ may re-export its own modules: that is not a cycle
    graph = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_imports_inside_functions_only_for_optional_heavy_dependencies():
    found = modules()
    wrong = []
    for name, path in found.items():
        lines = path.read_text().splitlines()
        for target, line, inside in imports(path, set(found)):
            if not inside:
                continue
            allowed = any(target == a or target.startswith(a + ".") for a in LAZY_ALLOWED)
            commented = "#" in lines[line - 1] or lines[line - 2].strip().startswith("#")
            if not (allowed and commented):
                wrong.append(f"{name}:{line} imports {target} inside a function")
    assert wrong == []


@pytest.mark.parametrize("package", ["data", "neighbours", "metrics", "memory", "diffusion",
                                     "probes", "report", "experiments", "cli"])
def test_every_floor_says_what_it_holds_and_may_import(package):
    doc = ast.get_docstring(ast.parse((SRC / "memgen" / package / "__init__.py").read_text()))
    assert doc and "import" in doc, f"memgen/{package}/__init__.py needs its floor's docstring"
