"""One errors module (issue 13, item 3): every user-facing error is defined once in bmca_clip/errors.py under
BmcaError, the command lines turn any of them into one `error:` line with exit status 2, and the modules
that used to define them still export the same class. Also: config.py, data/filters.py and eval/shard.py no
longer import each other in a cycle."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import bmca_clip
from bmca_clip import errors
from bmca_clip.cli import exit_on_user_error
from tests.helpers.config import REPO, tiny_train_overrides

# Exceptions that never reach a user as such, each kept in its module, with why.
PRIVATE = {
    "bmca_clip.data.decode.UnusableSample": "a sample skipped and counted by the stream, never raised out",
    "bmca_clip.eval.weighted.UndefinedMetric": "a metric undefined for one task; reported as null",
    "bmca_clip.eval.bootstrap.UndefinedInterval": "an interval undefined for one resample; reported as null",
    "bmca_clip.train.preemption.WaitInterrupted": "a BaseException that wakes the preemption wait; caught there",
    "bmca_clip.train.preemption.Preempted": "a SystemExit carrying exit code 75 so Slurm requeues the job",
}

# Where each error was defined before errors.py: the old import keeps working and names the same class.
OLD_HOMES = {
    "bmca_clip.config": ["ConfigError"],
    "bmca_clip.cli_args": ["ArgvError"],
    "bmca_clip.data.synthetic": ["CorpusArgumentError"],
    "bmca_clip.data.sources": ["DataError", "SourceCommitMoved"],
    "bmca_clip.data.loader": ["DataError"],
    "bmca_clip.data.hub": ["HubError"],
    "bmca_clip.data.http": ["ShardError"],
    "bmca_clip.model": ["ModelLoadError"],
    "bmca_clip.checkpoint": ["CheckpointError"],
    "bmca_clip.train.trainer": ["TrainingDiverged"],
    "bmca_clip.eval.tasks": ["TaskError"],
}
RENAMED = {  # old module, old name -> the distinct name in errors.py
    ("bmca_clip.wise_ft", "MergeError"): "WeightMergeError",
    ("bmca_clip.eval.merge", "MergeError"): "ResultsMergeError",
    ("bmca_clip.eval.shard", "ShardError"): "TaskShardError",
}
BUILTIN_BASES = {
    "ConfigError": ValueError,
    "ArgvError": ValueError,
    "CorpusArgumentError": ValueError,
    "TaskError": ValueError,
    "TaskShardError": ValueError,
    "ResultsMergeError": ValueError,
    "ComparisonError": ValueError,
    "DataError": RuntimeError,
    "SourceCommitMoved": RuntimeError,
    "HubError": RuntimeError,
    "ModelLoadError": RuntimeError,
    "WeightMergeError": RuntimeError,
    "CheckpointError": RuntimeError,
    "TrainingDiverged": RuntimeError,
    "ShardError": OSError,
}


def _all_modules() -> list[str]:
    names = ["bmca_clip"]
    for info in pkgutil.walk_packages(bmca_clip.__path__, "bmca_clip."):
        names.append(info.name)
    return names


def _user_errors() -> list[type]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]


def test_every_exception_class_is_in_errors_or_listed_private():
    found = set()
    for name in _all_modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("bmca_clip"):
                found.add(f"{cls.__module__}.{cls.__qualname__}")
    outside = {name for name in found if not name.startswith("bmca_clip.errors.")}
    assert outside == set(PRIVATE), (
        f"define user-facing errors in bmca_clip/errors.py: {outside - set(PRIVATE)}"
    )
    assert {c.__name__ for c in _user_errors()} == {"BmcaError", *BUILTIN_BASES}


def test_every_user_error_derives_from_the_base_and_keeps_its_builtin_base():
    for cls in _user_errors():
        assert issubclass(cls, errors.BmcaError), cls
        if cls is not errors.BmcaError:
            assert issubclass(cls, BUILTIN_BASES[cls.__name__]), cls


def test_old_imports_name_the_same_class():
    for module_name, names in OLD_HOMES.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert getattr(module, name) is getattr(errors, name), f"{module_name}.{name}"
    for (module_name, old), new in RENAMED.items():
        assert getattr(importlib.import_module(module_name), old) is getattr(errors, new)
    assert errors.WeightMergeError is not errors.ResultsMergeError
    assert errors.TaskShardError is not errors.ShardError


def _shard_error():
    return errors.ShardError("https://user:secret@host/a.tar", "http_404", "HTTP 404")


@pytest.mark.parametrize("cls", [c for c in _user_errors() if c is not errors.ShardError])
def test_the_cli_prints_any_user_error_as_one_line(cls, capsys):
    # Before errors.py the CLI caught a hand list: HubError and the data ShardError ended in a traceback.
    with pytest.raises(SystemExit) as stop, exit_on_user_error():
        raise cls("data.sources[0].repo: cannot be listed;\n  check the name")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: data.sources[0].repo: cannot be listed; check the name\n"


def test_a_shard_error_is_redacted_and_one_line(capsys):
    with pytest.raises(SystemExit) as stop, exit_on_user_error():
        raise _shard_error()
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: shard https://***@host/a.tar: HTTP 404\n"
    assert _shard_error().reason == "http_404" and isinstance(_shard_error(), OSError)


def test_a_bug_keeps_its_traceback():
    with pytest.raises(KeyError), exit_on_user_error():
        raise KeyError("not the user's doing")


def test_unknown_suite_at_train_time_is_one_error_line(tmp_path):
    # eval.suite names a suite only when training starts; cli.py used to find TaskError via sys.modules.
    corpus = tmp_path / "synthetic"
    from bmca_clip.data.synthetic import write_corpus

    write_corpus(
        corpus, train_samples=32, samples_per_shard=32, eval_samples=8, seed=0, min_size=32, max_size=48
    )
    overrides = tiny_train_overrides(corpus, tmp_path / "run", **{"train.steps": 1})
    proc = subprocess.run(
        [sys.executable, "train.py", *overrides, "eval.suite=typo", "eval.every_steps=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "unknown suite 'typo'" in error_lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def _imports(module: str) -> set[str]:
    """bmca_clip modules that `module` imports anywhere in its file (function-level imports included)."""
    path = Path(importlib.import_module(module).__file__)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bmca_clip"):
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bmca_clip")}
    return found


def test_no_import_cycle_through_config_filters_shard_or_errors():
    modules = set(_all_modules())
    graph = {m: (_imports(m) & modules) - {m} for m in modules}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    for module in ("bmca_clip.config", "bmca_clip.data.filters", "bmca_clip.eval.shard", "bmca_clip.errors"):
        assert module not in reachable(module), f"{module} imports itself through {sorted(reachable(module))}"
    assert _imports("bmca_clip.errors") <= {"bmca_clip.redact", "bmca_clip.redact.redact_url"}
