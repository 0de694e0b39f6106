"""Evaluation tasks and suites, declared as YAML files under conf/tasks/ and conf/suite/.

A name is looked up in the package's conf/<tasks|suite>/, then in <dir>/<tasks|suite>/ of each folder on
hydra.searchpath (paths.config_dirs), so a private suite can name private tasks kept beside it.

A task file says everything needed to score one dataset zero-shot: where its data lives and how its
columns read (`source`), the ordered class names and prompt templates, and the metrics to report; the
keys are documented in docs/task_schema.md. A suite file names a list of tasks. Everything is checked on
load, so a typo fails before any model is built, with the file, the key and the allowed values in the
message: unknown keys and values here (the dataclasses are in spec.py), the `source:` block in
source_schema.py (the keys each loader of eval/loaders/ needs or does not read, the label encodings that
fit the loader and the type, label_map against classes), and the metrics and prompts each task type
(types.TASK_TYPES) declares.
"""

from __future__ import annotations

from pathlib import Path

from bmca_clip.errors import TaskError
from bmca_clip.eval.checks import check_choice, check_keys, fail, read_yaml, string_list
from bmca_clip.eval.protocols import expand, parse_protocols, parse_train_keys
from bmca_clip.eval.source_schema import parse_source
from bmca_clip.eval.spec import DOMAINS, Source, Suite, Task
from bmca_clip.eval.types import TASK_TYPES
from bmca_clip.eval.types.base import TaskType
from bmca_clip.eval.verify import UNVERIFIED_FACTS, unverified_facts
from bmca_clip.paths import CONF_DIR, config_dirs

# The public names: Task, Suite and TaskError stay importable from here (spec.py and errors.py hold them).
__all__ = [
    "DOMAINS",
    "Source",
    "Suite",
    "Task",
    "TaskError",
    "list_suites",
    "list_tasks",
    "load_suite",
    "load_task",
]
__all__ += ["suite_from_mapping"]

REPO_ROOT = Path(__file__).resolve().parents[2]  # a source checkout (docs/); configs are found via CONF_DIR
DEFAULT_TASKS_DIR = CONF_DIR / "tasks"
DEFAULT_SUITES_DIR = CONF_DIR / "suite"


def _check_templates(file: Path, templates: tuple[str, ...]) -> None:
    marker = "\x00"  # a character no template holds, to count the slots that format() fills
    for template in templates:
        try:
            ok = template.format(marker).count(marker) == 1
        except (IndexError, KeyError, ValueError):  # "{c}", "{0} {1}", unbalanced braces
            ok = False
        if not ok:
            raise fail(
                file, "templates", f"'{template}' must hold exactly one positional {{}} (open_clip style)"
            )


def _parse_metrics(file: Path, raw: dict, task_type: TaskType) -> tuple[str, tuple[str, ...]]:
    names = (
        string_list(file, "metrics", raw["metrics"]) if raw.get("metrics") else task_type.default_metrics(raw)
    )
    main = raw.get("main_metric") or task_type.default_main_metric
    for key, name in [*(("metrics", n) for n in names), ("main_metric", main)]:
        try:
            task_type.check_metric(name, raw)
        except KeyError as exc:  # the message names the allowed metrics or why this one does not fit
            raise fail(file, key, exc.args[0]) from None
    return main, names if main in names else (*names, main)


def _check_extras(file: Path, raw: dict) -> None:
    """The catalogue fields: n_expected, verified, unverified, notes."""
    n = raw.get("n_expected")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise fail(file, "n_expected", f"expected a positive integer, got {n!r}")
    if not isinstance(raw.get("verified", False), bool):
        raise fail(file, "verified", f"expected true or false, got {raw['verified']!r}")
    unverified = raw.get("unverified") or []
    if not isinstance(unverified, list) or not all(isinstance(u, str) and u for u in unverified):
        raise fail(file, "unverified", f"expected a list of strings, got {unverified!r}")
    unknown = sorted(unverified_facts(unverified) - set(UNVERIFIED_FACTS))
    if unknown:
        allowed = ", ".join(UNVERIFIED_FACTS)
        raise fail(
            file,
            "unverified",
            f"unknown fact(s) {unknown}; write '<fact>' or '<fact> (<detail>)' with a fact of: {allowed}",
        )
    raw["unverified"] = tuple(unverified)
    for key in ("notes", "description", "licence"):
        if key in raw and not isinstance(raw[key], str):
            raise fail(file, key, f"expected a string, got {raw[key]!r}")


def _parse_task(file: Path, raw: dict) -> Task:
    check_keys(file, raw, Task, required=("name", "type", "domain", "source"))
    if raw["name"] != file.stem:
        raise fail(file, "name", f"'{raw['name']}' must equal the file name '{file.stem}'")
    check_choice(file, "type", raw["type"], TASK_TYPES)
    check_choice(file, "domain", raw["domain"], DOMAINS)
    task_type = TASK_TYPES[raw["type"]]
    raw = {k: v for k, v in raw.items() if v is not None}
    raw = {**raw, "classes": raw.get("classes") or [], "templates": raw.get("templates") or []}
    if task_type.needs_prompts and not raw["classes"] and _classes_unknown(raw):
        _check_templates(file, string_list(file, "templates", raw["templates"]))  # classes: see verify.py
    elif task_type.needs_prompts:
        classes = string_list(file, "classes", raw["classes"])
        if len(set(classes)) != len(classes):
            raise fail(file, "classes", "class names must be unique (each becomes one classifier column)")
        _check_templates(file, string_list(file, "templates", raw["templates"]))
    else:
        for key in ("classes", "templates"):
            if raw[key]:
                raise fail(file, key, f"not used by '{raw['type']}' tasks; remove it")
    source = parse_source(file, raw["source"], raw["type"], raw["classes"])
    raw = parse_train_keys(file, raw)
    _check_extras(file, raw)
    main, names = _parse_metrics(file, raw, task_type)
    return _build_task(raw, source, main, names, file)


def _classes_unknown(raw: dict) -> bool:
    """A task of a type that allows it (classification) whose class names are declared unknown may leave classes out: its load then
    fails listing the values the data holds (verify.py), which is what fills them in."""
    entries = raw.get("unverified")
    known = isinstance(entries, list) and all(isinstance(e, str) for e in entries)
    return (
        TASK_TYPES[raw["type"]].classes_may_be_unknown
        and known
        and "class names" in unverified_facts(entries)
    )


def _build_task(raw: dict, source: Source, main: str, names: tuple[str, ...], file: Path) -> Task:
    values = {**raw, "source": source, "main_metric": main, "metrics": tuple(names), "yaml_path": file}
    values["classes"], values["templates"] = tuple(raw["classes"]), tuple(raw["templates"])
    return Task(**values)


def _folders(folder: Path | None, group: str) -> list[Path]:
    return [Path(folder)] if folder is not None else config_dirs(group)


def _names(folders: list[Path]) -> list[str]:
    return sorted({p.stem for folder in folders for p in Path(folder).glob("*.yaml")})


def _resolve(name_or_path: str | Path, folders: list[Path], kind: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise TaskError(f"{kind} file {path} does not exist")
        return path
    for folder in folders:
        if (path := Path(folder) / f"{name_or_path}.yaml").is_file():
            return path
    where = " or ".join(str(f) for f in folders)
    names = ", ".join(_names(folders)) or "none"
    raise TaskError(
        f"unknown {kind} '{name_or_path}': no {name_or_path}.yaml in {where}; available {kind}s: {names}"
    )


def list_tasks(tasks_dir: Path | None = None) -> list[str]:
    """Names of the task YAMLs in tasks_dir (default: conf/tasks and hydra.searchpath's tasks/), sorted."""
    return _names(_folders(tasks_dir, "tasks"))


def list_suites(suites_dir: Path | None = None) -> list[str]:
    """Names of the suite YAMLs in suites_dir (default: conf/suite and hydra.searchpath's suite/), sorted."""
    return _names(_folders(suites_dir, "suite"))


def load_task(name_or_path: str | Path, tasks_dir: Path | None = None) -> Task:
    """The task called name in tasks_dir (default: conf/tasks, then hydra.searchpath's tasks/), or the YAML
    file at a path, checked; TaskError if invalid."""
    file = _resolve(name_or_path, _folders(tasks_dir, "tasks"), "task")
    return _parse_task(file, read_yaml(file))


def load_suite(
    name_or_path: str | Path,
    suites_dir: Path | None = None,
    tasks_dir: Path | None = None,
) -> Suite:
    """The suite called name in suites_dir (or at a path) with all its tasks loaded from tasks_dir (both
    default to conf/ and then the folders on hydra.searchpath)."""
    file = _resolve(name_or_path, _folders(suites_dir, "suite"), "suite")
    raw = read_yaml(file)
    check_keys(file, raw, Suite, required=("name", "tasks"))
    if raw["name"] != file.stem:
        raise fail(file, "name", f"'{raw['name']}' must equal the file name '{file.stem}'")
    return suite_from_mapping(raw, file, tasks_dir)


def suite_from_mapping(raw: dict, origin: Path | str, tasks_dir: Path | None = None) -> Suite:
    """A suite from its YAML's content (`origin` names it in messages). Each entry of tasks is the name of
    a task in tasks_dir (default: conf/tasks, then tasks/ of each folder on hydra.searchpath) or the path of
    a task YAML, so a suite kept outside the repository can list tasks of its own."""
    origin = Path(origin)
    check_keys(origin, raw, Suite, required=("name", "tasks"))
    names = string_list(origin, "tasks", raw["tasks"])
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise fail(origin, "tasks", f"lists {duplicates} more than once")
    folders = _folders(tasks_dir, "tasks")
    available = _names(folders)
    for name in names:
        if name not in available and Path(name).suffix not in (".yaml", ".yml"):
            where = " and ".join(str(f) for f in folders)
            raise fail(
                origin,
                "tasks",
                f"unknown task '{name}'; available tasks in {where}: {', '.join(available)} "
                "(or give the path of a task YAML, or put it in <dir>/tasks/ of a hydra.searchpath folder)",
            )
    expect = raw.get("expect_tasks")
    if expect is not None and (
        isinstance(expect, bool) or not isinstance(expect, int) or expect != len(names)
    ):
        raise fail(origin, "expect_tasks", f"says {expect!r} tasks, but the suite lists {len(names)}")
    protocols = parse_protocols(origin, raw)
    tasks = expand(tuple(load_task(name, tasks_dir) for name in names), protocols)
    return Suite(
        name=raw["name"],
        tasks=tasks,
        protocols=protocols,
        description=raw.get("description") or "",
        expect_tasks=expect,
        yaml_path=origin,
    )
