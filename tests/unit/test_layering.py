"""The import graph points down the stages: no cycles, components never import the recipe or the tools above it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "mabe"
# the recipe and the tools built on it; nothing below may import them
TOP = {"mabe.train", "mabe.launch", "mabe.cv", "mabe.cli", "mabe.demo", "mabe.bench", "mabe.report", "mabe.ethogram",
       "mabe.bundle", "mabe.__main__"}
# what training components may import from mabe
COMPONENT_DEPS = {"mabe", "mabe.config", "mabe.errors", "mabe.io", "mabe.schema", "mabe.windows", "mabe.models",
                  "mabe.checkpoint", "mabe.runs", "mabe.data", "mabe.prepare", "mabe.postracks"}


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported mabe module, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mabe"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("mabe")]
        out += [(n, id(node) in top_level) for n in names]
    return out


MODULES = {_module(p): p for p in sorted(SRC.rglob("*.py"))}


def _graph() -> dict[str, set[str]]:
    return {m: {n for n, _ in _imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if n == "mabe" or m == "mabe":
                continue
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(n):], n]))
            if n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("mabe.training")))
def test_training_components_import_only_lower_stages(module):
    bad = sorted(n for n, _ in _imports(MODULES[module]) if n in MODULES
                 and not n.startswith("mabe.training") and n not in COMPONENT_DEPS)
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in TOP))
def test_nothing_below_imports_the_recipe_or_the_tools(module):
    bad = sorted(n for n, _ in _imports(MODULES[module]) if n in TOP)
    assert not bad, f"{module} imports {bad}"


def test_every_module_imports_on_its_own():
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    mods = sorted(m for m in MODULES if m != "mabe.__main__")
    subprocess.run([sys.executable, "-c", code, *mods], check=True, cwd=SRC.parent,
                   env={"PYTHONPATH": str(SRC.parent), "PATH": "/usr/bin:/bin"})


# in-function imports that a heavy dependency justifies: the CLI imports each stage only for its command
# (``mabe --help`` must not load torch), and the recipe loads the report (matplotlib) only to write one
LAZY_OK = {"mabe.cli": None, "mabe.train": {"mabe", "mabe.report"}}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_mabe_modules_are_imported_at_the_top(module):
    lazy = {n for n, top in _imports(MODULES[module]) if not top}
    allowed = LAZY_OK.get(module, set())
    if allowed is None:
        return
    assert lazy <= allowed, f"{module} imports {sorted(lazy - allowed)} inside a function"
