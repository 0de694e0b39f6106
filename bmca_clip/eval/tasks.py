"""Evaluation tasks and suites, declared as YAML files under conf/tasks/ and conf/suite/.

A name is looked up in the package's conf/<tasks|suite>/, then in <dir>/<tasks|suite>/ of each folder on
hydra.searchpath (paths.config_dirs), so a private suite can name private tasks kept beside it.

A task file says everything needed to score one dataset zero-shot: where its data lives and how its
columns read (`source`), the ordered class names and prompt templates, and the metrics to report; the
keys are documented in docs/task_schema.md. A suite file names a list of tasks. Everything is checked on
load, so a typo fails before any model is built, with the file, the key and the allowed values in the
message: unknown keys and values, the source keys each loader needs or does not read (loaders.LOADERS),
the label encodings that fit the loader and the type, label_map against classes, metrics by type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from bmca_clip.errors import TaskError
from bmca_clip.eval import metrics as cls_metrics
from bmca_clip.eval import multilabel, multiple_choice, retrieval
from bmca_clip.paths import CONF_DIR, config_dirs

REPO_ROOT = Path(__file__).resolve().parents[2]  # a source checkout (docs/); configs are found via CONF_DIR
DEFAULT_TASKS_DIR = CONF_DIR / "tasks"
DEFAULT_SUITES_DIR = CONF_DIR / "suite"

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


@dataclass(frozen=True)
class Source:
    """Where a task's data lives and how to read it (the `source:` block of a task YAML; docs/task_schema.md)."""

    loader: str  # key of loaders.LOADERS
    repo_id: str | None = None  # hub dataset repo (all loaders but csv)
    revision: str | None = None  # hub commit sha or branch; None = main
    path: str | None = None  # csv: folder, relative to the eval data_root unless absolute
    file: str | None = None  # csv: table inside path; default "<split>.csv"
    split: str = "test"
    config_name: str | None = None  # hf_dataset: the datasets config name
    data_files: tuple[str, ...] | None = None  # hf_parquet: glob(s) inside the repo
    archive: str | None = None  # zip_split_json: zip inside the repo
    split_file: str | None = None  # zip_split_json: JSON inside the repo, {split: [[relpath, label, name]]}
    image_column: str = "image"  # wds: the image key; "webp;jpg;png" takes the first one a sample has
    label_column: str | None = None  # classification, multilabel (wds: the label key, e.g. cls)
    caption_column: str | None = None  # retrieval
    questions_column: str | None = None  # multiple_choice: per-image {name: {question, options, answer}}
    question: str | None = None  # multiple_choice: which question of questions_column, e.g. modality
    label_encoding: str | None = None  # key of datasets.LABEL_ENCODINGS; default by type and loader
    label_map: dict[str, str] | None = None  # raw label (as a string) -> class name
    filter: dict | None = None  # {column: value or [values]}: keep the rows holding one of them
    group_column: str | None = None  # rows sharing its value (a patient, a figure): one bootstrap cluster


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
    n_expected: int | None = None  # the catalogue's size; a different n at load is noted in the result
    verified: bool = False  # catalogue tag [V]: columns and classes checked against the data
    unverified: tuple[str, ...] = ()  # facts not verified: "<fact> [(<detail>)]" (verify.UNVERIFIED_FACTS)
    notes: str = ""  # what a reader of the results must know (duplicates, near-chance, ...)
    yaml_path: Path | None = field(default=None, compare=False)  # where it was read from, for messages


@dataclass(frozen=True)
class Suite:
    """A named, ordered list of tasks (conf/suite/<name>.yaml)."""

    name: str
    tasks: tuple[Task, ...]
    description: str = ""
    expect_tasks: int | None = None  # when set, loading fails unless the suite has this many tasks
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

    columns: tuple[str, ...]  # source keys that must be set (columns, and the question to ask)
    needs_prompts: bool  # classes and templates required (else not allowed)
    encodings: tuple[str, ...]  # label encodings that make its labels (none: label_encoding not allowed)
    default_metrics: Callable[[dict], tuple[str, ...]]
    default_main_metric: str
    check_metric: Callable[[str, dict], object]  # raises KeyError with the reason


TASK_TYPES: dict[str, TaskType] = {
    "classification": TaskType(
        columns=("image_column", "label_column"),
        needs_prompts=True,
        encodings=("int", "string", "bool", "sequence_first", "split_json", "detection_crops"),
        # AUROC for binary tasks only, top-5 where 5 guesses are well below all classes (TASKS.md §4).
        default_metrics=lambda t: (
            *cls_metrics.DEFAULT_METRICS,
            *(("top5_accuracy",) if len(t["classes"]) >= 6 else ()),
            *(("auroc",) if len(t["classes"]) == 2 else ()),
        ),
        default_main_metric="balanced_accuracy",
        check_metric=_check_cls_metric,
    ),
    "multiple_choice": TaskType(
        columns=("image_column", "questions_column", "question"),
        needs_prompts=False,
        encodings=(),
        default_metrics=lambda t: multiple_choice.DEFAULT_METRICS,
        default_main_metric="accuracy",
        check_metric=lambda name, t: multiple_choice.check_metric(name),
    ),
    "multilabel": TaskType(
        columns=("image_column", "label_column"),
        needs_prompts=True,
        encodings=("mask_presence",),
        default_metrics=lambda t: multilabel.DEFAULT_METRICS,
        default_main_metric="mAP",
        check_metric=lambda name, t: multilabel.check_metric(name),
    ),
    "retrieval": TaskType(
        columns=("image_column", "caption_column"),
        needs_prompts=False,
        encodings=(),
        default_metrics=lambda t: retrieval.DEFAULT_METRICS,
        default_main_metric="text_to_image_R@1",
        check_metric=lambda name, t: retrieval.parse_recall_metric(name),
    ),
}
# Encodings whose raw labels may be renamed by source.label_map.
MAPPED_ENCODINGS = ("string", "bool", "mask_presence", "detection_crops")
# Integer labels whose data may name its classes (ClassLabel names, classnames.txt, the split JSON): there
# label_map maps those names to the task's classes, and the load checks the order (verify.py).
NAMED_ENCODINGS = ("int", "sequence_first", "split_json")
_STRING_KEYS = (
    "loader", "repo_id", "revision", "path", "file", "split", "config_name", "archive", "split_file",
    "image_column", "label_column", "caption_column", "questions_column", "question", "label_encoding",
    "group_column",
)  # fmt: skip
# Task types whose results carry bootstrap CIs, so source.group_column means something there.
GROUPED_TYPES = ("classification", "retrieval")


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


def _check_loader_keys(file: Path, raw: dict, loader_name: str, type_name: str, task_type: TaskType) -> None:
    from bmca_clip.eval.datasets import LOADER_KEYS, LOADERS  # datasets.py imports this module

    loader = LOADERS[loader_name]
    if type_name not in loader.types:
        raise _fail(
            file,
            "type",
            f"loader '{loader_name}' cannot feed '{type_name}' tasks; it feeds {', '.join(loader.types)}",
        )
    for key in LOADER_KEYS:
        if key in raw and key not in (*loader.required, *loader.optional):
            users = [name for name, other in LOADERS.items() if key in (*other.required, *other.optional)]
            raise _fail(
                file, f"source.{key}", f"not read by loader '{loader_name}' (only by {', '.join(users)})"
            )
    columns = task_type.columns
    if not loader.has_columns:
        for key in ("image_column", "label_column"):
            if key in raw:
                raise _fail(
                    file,
                    f"source.{key}",
                    f"loader '{loader_name}' takes images and labels from split_file; remove it",
                )
        columns = tuple(c for c in columns if c not in ("image_column", "label_column"))
    defaults = {f.name: f.default for f in fields(Source)}  # image_column defaults to "image"
    for key in (*loader.required, *columns):
        if raw.get(key, defaults.get(key)) in (None, ""):
            raise _fail(
                file,
                f"source.{key}",
                f"required (loader '{loader_name}', type '{type_name}') but missing or empty",
            )
    for key in _STRING_KEYS:
        if key in raw and not isinstance(raw[key], str):
            raise _fail(file, f"source.{key}", f"expected a string, got {raw[key]!r}")


def _check_encoding(file: Path, raw: dict, type_name: str, task_type: TaskType) -> None:
    from bmca_clip.eval.datasets import LABEL_ENCODINGS, LOADERS

    allowed = [e for e in LOADERS[raw["loader"]].encodings if e in task_type.encodings]
    if "label_encoding" not in raw:
        if allowed:
            raw["label_encoding"] = allowed[0]
        return
    _check_choice(file, "source.label_encoding", raw["label_encoding"], LABEL_ENCODINGS)
    if raw["label_encoding"] not in allowed:
        fits = ", ".join(allowed) or "none: remove label_encoding"
        raise _fail(
            file,
            "source.label_encoding",
            f"'{raw['label_encoding']}' does not fit loader '{raw['loader']}' with type '{type_name}'; allowed: {fits}",
        )


def _check_label_map(file: Path, raw: dict, classes: list) -> None:
    label_map, encoding = raw.get("label_map"), raw.get("label_encoding")
    if label_map is None:
        if encoding == "mask_presence":
            raise _fail(
                file, "source.label_map", 'mask_presence needs it: {mask value ("#rrggbb" or index): class}'
            )
        if encoding == "bool" and len(classes) != 2:
            raise _fail(
                file, "classes", f"label_encoding bool without label_map needs 2 classes, got {len(classes)}"
            )
        return
    if not isinstance(label_map, dict) or not all(isinstance(v, str) for v in label_map.values()):
        raise _fail(
            file, "source.label_map", f"expected a mapping raw label -> class name, got {label_map!r}"
        )
    if encoding not in (*MAPPED_ENCODINGS, *NAMED_ENCODINGS):
        allowed = ", ".join((*MAPPED_ENCODINGS, *NAMED_ENCODINGS))
        raise _fail(file, "source.label_map", f"only read with label_encoding {allowed}")
    # YAML reads `0:` or `True:` as int/bool keys; the data's labels are compared as strings.
    raw["label_map"] = label_map = {str(k): v for k, v in label_map.items()}
    unknown = set(label_map.values()) - set(classes)
    if unknown:
        raise _fail(file, "source.label_map", f"maps to {sorted(unknown)}, which are not in classes")
    if encoding == "mask_presence":
        colours = [bool(re.fullmatch(r"#[0-9a-fA-F]{6}", k)) for k in label_map]
        if not (all(colours) or all(re.fullmatch(r"-?[0-9]+", k) for k in label_map)):
            raise _fail(
                file, "source.label_map", 'mask_presence keys must all be colours "#rrggbb" or all integers'
            )
        never = [c for c in classes if c not in label_map.values()]
        if never:
            raise _fail(
                file,
                "source.label_map",
                f"classes {never} have no mask value, so they could never be present",
            )


def _check_filter(file: Path, value) -> None:
    scalar = (str, int, float, bool, type(None))
    ok = isinstance(value, dict) and value and all(isinstance(k, str) for k in value)
    ok = ok and all(
        isinstance(v, scalar) or (isinstance(v, list) and v and all(isinstance(x, scalar) for x in v))
        for v in value.values()
    )
    if not ok:
        raise _fail(file, "source.filter", f"expected {{column: value or [values]}}, got {value!r}")


def _parse_source(file: Path, raw, type_name: str, classes: list) -> Source:
    from bmca_clip.eval.datasets import LOADERS

    if not isinstance(raw, dict):
        raise _fail(file, "source", f"expected a mapping, got {raw!r}")
    _check_keys(file, raw, Source, "source.", required=("loader",))
    raw = {k: v for k, v in raw.items() if v is not None}  # null reads as "not set": the default
    _check_choice(file, "source.loader", raw["loader"], LOADERS)
    task_type = TASK_TYPES[type_name]
    _check_loader_keys(file, raw, raw["loader"], type_name, task_type)
    if "data_files" in raw:
        files = raw["data_files"]
        raw["data_files"] = _string_list(
            file, "source.data_files", [files] if isinstance(files, str) else files
        )
    if "filter" in raw:
        _check_filter(file, raw["filter"])
    _check_encoding(file, raw, type_name, task_type)
    _check_label_map(file, raw, classes)
    if "group_column" in raw and (type_name not in GROUPED_TYPES or not LOADERS[raw["loader"]].has_columns):
        raise _fail(
            file,
            "source.group_column",
            f"only for {' and '.join(GROUPED_TYPES)} tasks whose loader reads columns; remove it",
        )
    return Source(**raw)


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


def _check_extras(file: Path, raw: dict) -> None:
    """The catalogue fields: n_expected, verified, unverified, notes."""
    n = raw.get("n_expected")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise _fail(file, "n_expected", f"expected a positive integer, got {n!r}")
    if not isinstance(raw.get("verified", False), bool):
        raise _fail(file, "verified", f"expected true or false, got {raw['verified']!r}")
    unverified = raw.get("unverified") or []
    if not isinstance(unverified, list) or not all(isinstance(u, str) and u for u in unverified):
        raise _fail(file, "unverified", f"expected a list of strings, got {unverified!r}")
    from bmca_clip.eval.verify import UNVERIFIED_FACTS, unverified_facts  # verify.py imports this module

    unknown = sorted(unverified_facts(unverified) - set(UNVERIFIED_FACTS))
    if unknown:
        allowed = ", ".join(UNVERIFIED_FACTS)
        raise _fail(
            file,
            "unverified",
            f"unknown fact(s) {unknown}; write '<fact>' or '<fact> (<detail>)' with a fact of: {allowed}",
        )
    raw["unverified"] = tuple(unverified)
    for key in ("notes", "description", "licence"):
        if key in raw and not isinstance(raw[key], str):
            raise _fail(file, key, f"expected a string, got {raw[key]!r}")


def _parse_task(file: Path, raw: dict) -> Task:
    _check_keys(file, raw, Task, required=("name", "type", "domain", "source"))
    if raw["name"] != file.stem:
        raise _fail(file, "name", f"'{raw['name']}' must equal the file name '{file.stem}'")
    _check_choice(file, "type", raw["type"], TASK_TYPES)
    _check_choice(file, "domain", raw["domain"], DOMAINS)
    task_type = TASK_TYPES[raw["type"]]
    raw = {k: v for k, v in raw.items() if v is not None}
    raw = {**raw, "classes": raw.get("classes") or [], "templates": raw.get("templates") or []}
    if task_type.needs_prompts and not raw["classes"] and _classes_unknown(raw):
        _check_templates(file, _string_list(file, "templates", raw["templates"]))  # classes: see verify.py
    elif task_type.needs_prompts:
        classes = _string_list(file, "classes", raw["classes"])
        if len(set(classes)) != len(classes):
            raise _fail(file, "classes", "class names must be unique (each becomes one classifier column)")
        _check_templates(file, _string_list(file, "templates", raw["templates"]))
    else:
        for key in ("classes", "templates"):
            if raw[key]:
                raise _fail(file, key, f"not used by '{raw['type']}' tasks; remove it")
    source = _parse_source(file, raw["source"], raw["type"], raw["classes"])
    _check_extras(file, raw)
    main, names = _parse_metrics(file, raw, task_type)
    return _build_task(raw, source, main, names, file)


def _classes_unknown(raw: dict) -> bool:
    """A classification task whose class names are declared unknown may leave classes out: its load then
    fails listing the values the data holds (verify.py), which is what fills them in."""
    from bmca_clip.eval.verify import unverified_facts

    entries = raw.get("unverified")
    known = isinstance(entries, list) and all(isinstance(e, str) for e in entries)
    return raw["type"] == "classification" and known and "class names" in unverified_facts(entries)


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
    return _parse_task(file, _read_yaml(file))


def load_suite(
    name_or_path: str | Path,
    suites_dir: Path | None = None,
    tasks_dir: Path | None = None,
) -> Suite:
    """The suite called name in suites_dir (or at a path) with all its tasks loaded from tasks_dir (both
    default to conf/ and then the folders on hydra.searchpath)."""
    file = _resolve(name_or_path, _folders(suites_dir, "suite"), "suite")
    raw = _read_yaml(file)
    _check_keys(file, raw, Suite, required=("name", "tasks"))
    if raw["name"] != file.stem:
        raise _fail(file, "name", f"'{raw['name']}' must equal the file name '{file.stem}'")
    return suite_from_mapping(raw, file, tasks_dir)


def suite_from_mapping(raw: dict, origin: Path | str, tasks_dir: Path | None = None) -> Suite:
    """A suite from its YAML's content (`origin` names it in messages). Each entry of tasks is the name of
    a task in tasks_dir (default: conf/tasks, then tasks/ of each folder on hydra.searchpath) or the path of
    a task YAML, so a suite kept outside the repository can list tasks of its own."""
    origin = Path(origin)
    _check_keys(origin, raw, Suite, required=("name", "tasks"))
    names = _string_list(origin, "tasks", raw["tasks"])
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(origin, "tasks", f"lists {duplicates} more than once")
    folders = _folders(tasks_dir, "tasks")
    available = _names(folders)
    for name in names:
        if name not in available and Path(name).suffix not in (".yaml", ".yml"):
            where = " and ".join(str(f) for f in folders)
            raise _fail(
                origin,
                "tasks",
                f"unknown task '{name}'; available tasks in {where}: {', '.join(available)} "
                "(or give the path of a task YAML, or put it in <dir>/tasks/ of a hydra.searchpath folder)",
            )
    expect = raw.get("expect_tasks")
    if expect is not None and (
        isinstance(expect, bool) or not isinstance(expect, int) or expect != len(names)
    ):
        raise _fail(origin, "expect_tasks", f"says {expect!r} tasks, but the suite lists {len(names)}")
    tasks = tuple(load_task(name, tasks_dir) for name in names)
    return Suite(
        name=raw["name"],
        tasks=tasks,
        description=raw.get("description") or "",
        expect_tasks=expect,
        yaml_path=origin,
    )
