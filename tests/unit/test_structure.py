"""The house's size and layering rules (issue 13), measured over bmca_clip/: no module over 320 lines, no
function over 60, no import cycle among bmca_clip modules (module- and function-level imports alike; an import
under `if TYPE_CHECKING:` never runs, so it is left out). Every .py under tests/ (test modules, conftest
files and helpers) keeps the same 320-line ceiling.

A failure lists each offender on one line: `path: N lines`, `path::function: N lines`, `cycle: a -> b -> ...`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.config import REPO

MAX_MODULE_LINES = 320
MAX_FUNCTION_LINES = 60


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `root` (a package folder; its name is the top name)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def long_modules(root: Path, limit: int = MAX_MODULE_LINES) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > limit:
            out.append(f"{path.relative_to(root.parent)}: {lines} lines (at most {limit})")
    return out


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions and methods (nested ones too) whose `def` line to last line spans more than `limit` lines."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(
                        f"{path.relative_to(root.parent)}::{node.name}: {lines} lines (at most {limit})"
                    )
    return out


def _imports(tree: ast.Module):
    """Every import statement that can run: at module level, in functions and classes; not under TYPE_CHECKING."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports (`from pkg.a import b` is an edge to pkg.a.b if that is a module)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def import_cycles(root: Path) -> list[str]:
    """Strongly connected groups of two or more modules (Tarjan), each as one line."""
    graph, index, low, stack, on_stack, groups = import_graph(root), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [f"cycle of {len(g)} modules: {' <-> '.join(g)}" for g in sorted(groups)]


def test_the_measurements_catch_what_they_claim(tmp_path):
    """On a made-up package: a long module, a long nested function, a cycle closed by a function-level
    import (found), and a back-edge only under TYPE_CHECKING (ignored)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    body = "        y = 1\n" * MAX_FUNCTION_LINES  # with its `def` line: one over the limit
    (pkg / "funcs.py").write_text(f"class A:\n    def ok(self):\n        pass\n\n    def big(self):\n{body}")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import long\n")
    (pkg / "long2.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n"
    )
    (pkg / "long.py").write_text((pkg / "long.py").read_text() + "from pkg import long2\n")

    assert long_modules(pkg) == [f"pkg/long.py: {MAX_MODULE_LINES + 2} lines (at most {MAX_MODULE_LINES})"]
    assert long_functions(pkg) == [f"pkg/funcs.py::big: {MAX_FUNCTION_LINES + 1} lines (at most 60)"]
    assert import_cycles(pkg) == ["cycle of 3 modules: pkg.a <-> pkg.c <-> pkg.sub.b"]


def test_no_long_module_no_long_function_and_no_import_cycle_in_the_package():
    root = REPO / "bmca_clip"
    offenders = long_modules(root) + long_functions(root) + import_cycles(root)
    assert not offenders, "issue 13's size and layering rules are broken by:\n" + "\n".join(offenders)


def test_every_test_module_and_helper_keeps_the_same_module_ceiling():
    offenders = long_modules(REPO / "tests")
    assert not offenders, "split these test modules along what they test:\n" + "\n".join(offenders)


# docs/architecture.md's layers, top (0) to bottom: a module imports its own layer or those above it.
LAYERS = {
    "leaf": ["", "errors", "io", "paths", "cadence", "signals", "redact"],
    "config": ["config", "cli", "cli_args", "cli_help", "extras"],
    "data": ["data"],
    "model": [
        "model",
        "hf_tower",
        "model_configs",
        "loss",
        "optim",
        "precision",
        "checkpoint",
        "dist",
        "tracking",
        "wise_ft",
        "validation",
        "sharded",
        "dcp_convert",
    ],
    "evaluation": ["eval"],
    "training": ["train"],
    "entry points": ["scripts", "export", "model_card"],
}
# The schemas of a few groups live beside the code that reads them (documented in docs/architecture.md).
UPWARD_ALLOWED = {
    ("bmca_clip.config.data", "bmca_clip.data.filters"),
    ("bmca_clip.config.data", "bmca_clip.data.mixing"),
    ("bmca_clip.config.evaluate", "bmca_clip.eval.shard"),
}


def _layer(module: str) -> tuple[int, str]:
    top = module.split(".")[1] if "." in module else ""
    for rank, (layer, tops) in enumerate(LAYERS.items()):
        if top in tops:
            return rank, layer
    raise AssertionError(f"{module}: in no layer of LAYERS (tests/unit/test_structure.py); add it")


def test_each_module_imports_only_its_own_layer_or_those_above():
    graph = import_graph(REPO / "bmca_clip")
    wrong = [
        f"{a} ({_layer(a)[1]}) imports {b} ({_layer(b)[1]})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if _layer(b)[0] > _layer(a)[0] and (a, b) not in UPWARD_ALLOWED
    ]
    assert not wrong, "imports against docs/architecture.md's layers:\n" + "\n".join(wrong)
