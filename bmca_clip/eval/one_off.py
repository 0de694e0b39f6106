"""One-off tasks: `eval.py task=path/to/task.yaml` (or task=<a folder of task YAMLs>) scores those tasks
without a suite file.

A bare task name (`task=pcam`) scores that task of conf/tasks. `task=` is not a config key: before Hydra runs, scripts/evaluate.py hands argv to `one_off_argv`, which
replaces it with the suite overrides that say the same thing (`suite.name=<the file's stem or the folder's
name>`, `suite.tasks=[<each YAML's path>]`, `suite.expect_tasks=null`), so the printed config, output_dir
(runs/eval/<that name>), suite.json and the summary all name what was scored, and the tasks are loaded
and checked exactly as a suite's (eval/suite.py; a task YAML's schema is conf/tasks/*.yaml's, and its
errors name the file). Of the suite keys only `suite.protocols=[zero_shot,linear_probe,k_shot]` may come
with task= (eval/protocols.py: the task is also scored by those probes when it has a train_split); the
others are what task= sets (name, tasks, description, expect_tasks: output_dir= renames the run's
folder). A path that is neither a YAML file nor a folder holding one, task= given twice, or task= beside
suite= or another suite.* key ends in one ArgvError line. Light on purpose (no torch): it runs before
`--help`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bmca_clip.errors import ArgvError

KEY = "task"
YAML_SUFFIXES = (".yaml", ".yml")
_SUITE_ARGS = ("suite=", "suite.", "+suite", "++suite", "~suite")
ALLOWED = ("suite.protocols=",)  # the suite keys a one-off task takes (module docstring)


def task_files(value: str) -> tuple[str, list[Path | str]]:
    """(the one-off suite's name, the task YAML files) that task=<value> names; a bare name that is no
    file or folder here (task=pcam) is a task of conf/tasks (or hydra.searchpath's tasks/), which the
    suite then looks up and, if unknown, names with the available ones. ArgvError when none."""
    if not value:
        raise ArgvError(f"{KEY}= is empty; give a task YAML (e.g. {KEY}=conf/tasks/synthetic_color.yaml)")
    path = Path(value).expanduser()
    if not path.exists() and "/" not in value and path.suffix not in YAML_SUFFIXES:
        return value, [value]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
        if not files:
            raise ArgvError(f"{KEY}={value}: the folder holds no task YAML (*.yaml); point {KEY}= at one")
        return path.resolve().name, files
    if path.is_file():
        if path.suffix not in YAML_SUFFIXES:
            raise ArgvError(f"{KEY}={value}: not a task YAML (*.yaml or *.yml); see conf/tasks/ for the form")
        return path.stem, [path]
    raise ArgvError(
        f"{KEY}={value}: no such file or folder; give a task YAML (e.g. {KEY}=conf/tasks/synthetic_color.yaml) "
        "or a folder of them"
    )


def _quoted(text: str) -> str:
    """text as a single-quoted Hydra override value; ArgvError for what that cannot hold plainly."""
    if "'" in text or "\\" in text:
        raise ArgvError(f"{KEY}=: the path {text!r} holds a quote or backslash; rename or link it")
    return f"'{text}'"


def one_off_argv(argv: Sequence[str]) -> list[str]:
    """argv with task=<yaml or folder> replaced by the suite overrides that score just those tasks (module
    docstring); argv unchanged when it has no task=."""
    argv = list(argv)
    at = [i for i, arg in enumerate(argv) if i > 0 and arg.startswith(f"{KEY}=")]
    if not at:
        return argv
    if len(at) > 1:
        raise ArgvError(f"{KEY}= given {len(at)} times; give one task YAML or one folder of them")
    suite = next((a for a in argv[1:] if a.startswith(_SUITE_ARGS) and not a.startswith(ALLOWED)), None)
    if suite is not None:
        raise ArgvError(
            f"{argv[at[0]]} and {suite}: give one; {KEY}= scores that task YAML (or folder) alone, suite= "
            f"a suite of tasks (with {KEY}=, only suite.protocols=[...] may be set)"
        )
    value = argv[at[0]].partition("=")[2]
    name, files = task_files(value)
    overrides = [
        f"suite.name={_quoted(name)}",
        f"suite.tasks=[{','.join(_quoted(str(file)) for file in files)}]",
        f"suite.description={_quoted(f'one-off: {KEY}={value}')}",
        "suite.expect_tasks=null",
    ]
    return [*argv[: at[0]], *overrides, *argv[at[0] + 1 :]]
