"""The shape of bmca_clip/eval (issue 13): loaders that import only the task spec and the errors, scorers
that never see the embedding cache. The package-wide rules (no cycle, module and function sizes) are in
tests/unit/test_structure.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EVAL = Path(__file__).resolve().parents[3] / "bmca_clip" / "eval"


def _name(path: Path) -> str:
    parts = path.relative_to(EVAL.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(EVAL.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """The bmca_clip modules a file imports anywhere in it (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bmca_clip"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bmca_clip")}
    return found


GRAPH = {name: _imports(path) & set(MODULES) - {name} for name, path in MODULES.items()}


@pytest.mark.parametrize("name", [n for n in MODULES if n.startswith("bmca_clip.eval.loaders")])
def test_loaders_import_only_the_spec_the_errors_and_each_other(name):
    allowed = {"bmca_clip.errors", "bmca_clip.eval.spec"}
    outside = {
        m for m in _imports(MODULES[name]) if m not in allowed and not m.startswith("bmca_clip.eval.loaders")
    }
    assert outside == set(), f"{name} imports {outside}"


@pytest.mark.parametrize("name", [n for n in MODULES if n.startswith("bmca_clip.eval.types")])
def test_task_types_score_through_the_encoder_interface_and_never_see_the_cache(name):
    source = MODULES[name].read_text()
    assert "bmca_clip.eval.cache" not in _imports(MODULES[name])
    assert not [
        word for word in ("Cach", "import open_clip", "encode_image", "encode_text") if word in source
    ]
