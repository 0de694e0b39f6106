"""Evaluation tasks and suites, declared as YAML files under conf/tasks/ and conf/suite/.

A task file says everything needed to score one dataset zero-shot: where its data lives and how its
columns read (`source`), the ordered class names and prompt templates, and the metrics to report.
conf/tasks/synthetic_modality.yaml is the commented example to copy. A suite file names a list of tasks.
Everything is checked on load, so a typo fails before any model is built, with the file, the key and
the allowed values in the message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from bmca_clip.eval import metrics as cls_metrics
from bmca_clip.eval import retrieval

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TASKS_DIR = REPO_ROOT / "conf" / "tasks"
DEFAULT_SUITES_DIR = REPO_ROOT / "conf" / "suite"

# Domains group tasks into the report's per-domain means, so a misspelling would silently add a domain.
DOMAINS = (
    "pathology",
    "radiology",
    "ophthalmology",
    "dermatology",
    "surgery",
    "molecular_biology",
    "parasitology",
    "cell_biology",
    "microscopy",
    "retrieval",
    "synthetic",
)


class TaskError(ValueError):
    """A task or suite declaration, or the data it points at, is not what the harness expects."""


@dataclass(frozen=True)
class Source:
    """Where a task's data lives and how to read it (the `source:` block of a task YAML)."""

    loader: str  # key of datasets.LOADERS
    path: str  # folder, relative to the eval data_root unless absolute
    file: str | None = None  # table inside path; default "<split>.csv"
    image_column: str = "image"
    label_column: str | None = None  # classification
    caption_column: str | None = None  # retrieval
    label_encoding: str = "int"  # key of datasets.LABEL_ENCODINGS
    label_map: dict[str, str] | None = None  # raw label string -> class name
    revision: str | None = None  # hub revision, for hub loaders
    split: str = "test"


@dataclass(frozen=True)
class Task:
    """One evaluation task, as loaded and checked from conf/tasks/<name>.yaml."""

    name: str
    type: str  # key of TASK_TYPES
    domain: str  # one of DOMAINS
    source: Source
    description: str = ""
    classes: tuple[str, ...] = ()  # label i -> classes[i], filled into the templates
    templates: tuple[str, ...] = ()  # format strings with one positional {}
    main_metric: str = ""  # the number the summary table shows; default by type
    metrics: tuple[str, ...] = ()  # all metrics to compute (includes main_metric); default by type
    licence: str | None = None
    yaml_path: Path | None = field(default=None, compare=False)  # where it was read from, for messages


@dataclass(frozen=True)
class Suite:
    """A named, ordered list of tasks (conf/suite/<name>.yaml)."""

    name: str
    tasks: tuple[Task, ...]
    description: str = ""
    yaml_path: Path | None = field(default=None, compare=False)


def _check_cls_metric(name: str, task: dict) -> None:
    cls_metrics.classification_metric(name)  # KeyError when unknown
    n_classes, k = len(task["classes"]), cls_metrics.top_k_of(name)
    if name == "auroc" and n_classes != 2:
        raise KeyError(f"'auroc' needs exactly 2 classes; this task has {n_classes}")
    if k is not None and k >= n_classes:
        raise KeyError(f"'{name}' needs more than {k} classes to mean anything; this task has {n_classes}")


@dataclass(frozen=True)
class TaskType:
    """What a task type needs from its YAML; harness.EVALUATORS holds how it is scored."""

    columns: tuple[str, ...]  # source keys that must name a column
    needs_prompts: bool  # classes and templates required
    default_metrics: Callable[[dict], tuple[str, ...]]
    default_main_metric: str
    check_metric: Callable[[str, dict], object]  # raises KeyError with the reason


TASK_TYPES: dict[str, TaskType] = {
    "classification": TaskType(
        columns=("image_column", "label_column"),
        needs_prompts=True,
        # AUROC is reported for binary tasks only (TASKS.md §4).
        default_metrics=lambda t: (
            *cls_metrics.DEFAULT_METRICS,
            *(("auroc",) if len(t["classes"]) == 2 else ()),
        ),
        default_main_metric="balanced_accuracy",
        check_metric=_check_cls_metric,
    ),
    "retrieval": TaskType(
        columns=("image_column", "caption_column"),
        needs_prompts=False,
        default_metrics=lambda t: retrieval.DEFAULT_METRICS,
        default_main_metric="text_to_image_R@1",
        check_metric=lambda name, t: retrieval.parse_recall_metric(name),
    ),
}


def _fail(file: Path, key: str, problem: str) -> TaskError:
    return TaskError(f"{file}: key '{key}': {problem}")


def _read_yaml(file: Path) -> dict:
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise TaskError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TaskError(f"{file}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    return raw


def _check_keys(
    file: Path, raw: dict, schema: type, prefix: str = "", required: tuple[str, ...] = ()
) -> None:
    allowed = [f.name for f in fields(schema) if f.name != "yaml_path"]
    for key in raw:
        if key not in allowed:
            raise _fail(file, prefix + str(key), f"unknown key; allowed keys: {', '.join(allowed)}")
    for key in required:
        if raw.get(key) in (None, ""):
            raise _fail(file, prefix + key, "required but missing or empty")


def _check_choice(file: Path, key: str, value, allowed) -> None:
    if value not in allowed:
        raise _fail(file, key, f"unknown value '{value}'; allowed: {', '.join(allowed)}")


def _string_list(file: Path, key: str, value) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(file, key, f"expected a non-empty list of non-empty strings, got {value!r}")
    return tuple(value)


def _check_templates(file: Path, templates: tuple[str, ...]) -> None:
    marker = "\x00"  # a character no template holds, to count the slots that format() fills
    for template in templates:
        try:
            ok = template.format(marker).count(marker) == 1
        except (IndexError, KeyError, ValueError):  # "{c}", "{0} {1}", unbalanced braces
            ok = False
        if not ok:
            raise _fail(
                file, "templates", f"'{template}' must hold exactly one positional {{}} (open_clip style)"
            )


def _parse_source(file: Path, raw, task_type: TaskType) -> Source:
    from bmca_clip.eval.datasets import LABEL_ENCODINGS, LOADERS  # datasets.py imports this module

    if not isinstance(raw, dict):
        raise _fail(file, "source", f"expected a mapping, got {raw!r}")
    _check_keys(file, raw, Source, "source.", required=("loader", "path", *task_type.columns))
    for key in ("loader", "path", "file", "split", *task_type.columns):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise _fail(file, f"source.{key}", f"expected a string, got {raw[key]!r}")
    source = Source(**raw)
    _check_choice(file, "source.loader", source.loader, LOADERS)
    _check_choice(file, "source.label_encoding", source.label_encoding, LABEL_ENCODINGS)
    if source.label_map is not None:
        if not isinstance(source.label_map, dict):
            raise _fail(
                file,
                "source.label_map",
                f"expected a mapping raw label -> class name, got {source.label_map!r}",
            )
        # YAML reads `0:` or `True:` as int/bool keys; CSV cells are strings, so compare as strings.
        source = Source(**{**raw, "label_map": {str(k): v for k, v in source.label_map.items()}})
    return source


def _parse_metrics(file: Path, raw: dict, task_type: TaskType) -> tuple[str, tuple[str, ...]]:
    names = (
        _string_list(file, "metrics", raw["metrics"])
        if raw.get("metrics")
        else task_type.default_metrics(raw)
    )
    main = raw.get("main_metric") or task_type.default_main_metric
    for key, name in [*(("metrics", n) for n in names), ("main_metric", main)]:
        try:
            task_type.check_metric(name, raw)
        except KeyError as exc:  # the message names the allowed metrics or why this one does not fit
            raise _fail(file, key, exc.args[0]) from None
    return main, names if main in names else (*names, main)


def _parse_task(file: Path, raw: dict) -> Task:
    _check_keys(file, raw, Task, required=("name", "type", "domain", "source"))
    if raw["name"] != file.stem:
        raise _fail(file, "name", f"'{raw['name']}' must equal the file name '{file.stem}'")
    _check_choice(file, "type", raw["type"], TASK_TYPES)
    _check_choice(file, "domain", raw["domain"], DOMAINS)
    task_type = TASK_TYPES[raw["type"]]
    raw = {**raw, "classes": raw.get("classes") or [], "templates": raw.get("templates") or []}
    if task_type.needs_prompts:
        classes = _string_list(file, "classes", raw["classes"])
        if len(set(classes)) != len(classes):
            raise _fail(file, "classes", "class names must be unique (each becomes one classifier column)")
        _check_templates(file, _string_list(file, "templates", raw["templates"]))
    source = _parse_source(file, raw["source"], task_type)
    unknown = set((source.label_map or {}).values()) - set(raw["classes"])
    if unknown:
        raise _fail(file, "source.label_map", f"maps to {sorted(unknown)}, which are not in classes")
    main, names = _parse_metrics(file, raw, task_type)
    return _build_task(raw, source, main, names, file)


def _build_task(raw: dict, source: Source, main: str, names: tuple[str, ...], file: Path) -> Task:
    values = {**raw, "source": source, "main_metric": main, "metrics": tuple(names), "yaml_path": file}
    values["classes"], values["templates"] = tuple(raw["classes"]), tuple(raw["templates"])
    return Task(**values)


def _resolve(
    name_or_path: str | Path, folder: Path, kind: str, available: Callable[[Path], list[str]]
) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise TaskError(f"{kind} file {path} does not exist")
        return path
    path = Path(folder) / f"{name_or_path}.yaml"
    if not path.is_file():
        names = ", ".join(available(folder)) or "none"
        raise TaskError(f"unknown {kind} '{name_or_path}': no {path}; available {kind}s: {names}")
    return path


def list_tasks(tasks_dir: Path = DEFAULT_TASKS_DIR) -> list[str]:
    """Names of the task YAMLs in tasks_dir, sorted."""
    return sorted(p.stem for p in Path(tasks_dir).glob("*.yaml"))


def list_suites(suites_dir: Path = DEFAULT_SUITES_DIR) -> list[str]:
    """Names of the suite YAMLs in suites_dir, sorted."""
    return sorted(p.stem for p in Path(suites_dir).glob("*.yaml"))


def load_task(name_or_path: str | Path, tasks_dir: Path = DEFAULT_TASKS_DIR) -> Task:
    """The task called name in tasks_dir (or the YAML file at a path), checked; TaskError if invalid."""
    file = _resolve(name_or_path, tasks_dir, "task", list_tasks)
    return _parse_task(file, _read_yaml(file))


def load_suite(
    name_or_path: str | Path,
    suites_dir: Path = DEFAULT_SUITES_DIR,
    tasks_dir: Path = DEFAULT_TASKS_DIR,
) -> Suite:
    """The suite called name in suites_dir (or at a path) with all its tasks loaded from tasks_dir."""
    file = _resolve(name_or_path, suites_dir, "suite", list_suites)
    raw = _read_yaml(file)
    _check_keys(file, raw, Suite, required=("name", "tasks"))
    if raw["name"] != file.stem:
        raise _fail(file, "name", f"'{raw['name']}' must equal the file name '{file.stem}'")
    names = _string_list(file, "tasks", raw["tasks"])
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(file, "tasks", f"lists {duplicates} more than once")
    available = list_tasks(tasks_dir)
    for name in names:
        if name not in available:
            raise _fail(
                file,
                "tasks",
                f"unknown task '{name}'; available tasks in {tasks_dir}: {', '.join(available)}",
            )
    tasks = tuple(load_task(name, tasks_dir) for name in names)
    return Suite(name=raw["name"], tasks=tasks, description=raw.get("description", ""), yaml_path=file)
