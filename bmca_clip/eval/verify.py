"""Checks of a classification task's classes against what its data holds, run as its dataset is built.

- Integer labels (int, sequence_first, split_json) whose data names its classes (a ClassLabel's names in
  the parquet/arrow schema, a wds repo's classnames.txt, the split JSON's class names): those names,
  mapped through source.label_map when the task words its classes otherwise, must be the task's classes in
  order; a mismatch is refused showing both orders. Names that are bare digits ('0', '1', ...) say nothing
  about the classes and count as none.
- `unverified` (UNVERIFIED_FACTS below) says what must not be assumed. With "class order" or "class names"
  an integer-labelled task whose data names no classes is refused: a guessed order would mislabel every
  item silently. With "class names" or "label strings" a string-labelled task must meet every class in
  the data (a guessed raw string that never occurs would leave its class empty).
- A task whose classes are not known yet (left out, with "class names" unverified) is refused.
Every refusal is one line naming the task and the data, and lists the values the data really holds, so
that the first load of a task says how to complete its YAML.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bmca_clip.errors import TaskError
from bmca_clip.eval.decode import NAMED_ENCODINGS, normalise
from bmca_clip.eval.loaders.table import Table
from bmca_clip.eval.spec import Task

SHOW_VALUES = 40  # distinct values listed in a message

# What an `unverified` entry may name, and what it makes a load do (tasks.py checks the names on load). Facts whose error would
# mislabel silently block scoring until the data confirms them; the others fail loudly anyway when wrong.
UNVERIFIED_FACTS = {
    "class order": "integer labels: the data's own class names must confirm the order, else the load fails",
    "class names": "as class order for integer labels; string labels: every class must occur in the data",
    "label strings": "string labels: every class must occur in the data (raw values the map lacks fail)",
    "n": "noted in the result (n_expected is compared when set)",
    "licence": "noted in the result",
    "columns": "noted; a missing column fails the load",
    "image key": "noted; a sample without the key fails the load",
    "split": "noted; a missing split fails the load",
    "mask encoding": "noted in the result",
}


def unverified_facts(task_or_entries) -> set[str]:
    """The facts (UNVERIFIED_FACTS keys) that a task's `unverified` entries name."""
    entries = getattr(task_or_entries, "unverified", task_or_entries)
    return {entry.split("(", 1)[0].strip() for entry in entries}


def values_held(values: Sequence) -> str:
    """'a' (12), 'b' (3), ...: the distinct values with their counts (integers in order, else commonest
    first), for messages."""
    counts = Counter(v if isinstance(v, (int, str)) else str(v) for v in values)
    if all(isinstance(v, int) for v in counts):
        pairs = sorted(counts.items())
    else:
        pairs = counts.most_common()
    shown = ", ".join(f"{v!r} ({n})" for v, n in pairs[:SHOW_VALUES])
    return shown + (f", ... ({len(pairs)} distinct)" if len(pairs) > SHOW_VALUES else "")


def _unverified(task: Task, *facts: str) -> str:
    entries = [e for e in task.unverified if unverified_facts([e]) & set(facts)]
    return "; ".join(entries)


def require_classes(task: Task, table: Table, column: str, cells: Sequence) -> None:
    """Refuse a task whose classes are not known yet, listing the raw labels the data holds."""
    if task.classes:
        return
    raise TaskError(
        f"task '{task.name}': {table.where} column '{column}': the classes are not known yet "
        f"(unverified: {_unverified(task, 'class names')}); the data holds {values_held(cells)}: "
        "list these as the task's classes (with a source.label_map from the raw values) in its YAML"
    )


def _informative(names: Sequence[str] | None) -> bool:
    return bool(names) and not all(str(n).strip().isdigit() for n in names)


def _check_order(task: Task, names: Sequence[str], where: str) -> dict[str, str]:
    mapping = {normalise(k): v for k, v in (task.source.label_map or {}).items()}
    as_classes = [mapping.get(normalise(n), n) if mapping else n for n in names]
    wanted = [normalise(c) for c in task.classes]
    if [normalise(n) for n in as_classes[: len(wanted)]] == wanted:
        return {"class_order": f"checked against the data's class names {list(names)}"}
    mapped = f" (through source.label_map: {as_classes})" if mapping else ""
    raise TaskError(
        f"task '{task.name}': {where}: the data's class names are not the task's classes in order: "
        f"the data has {list(names)}{mapped}, the task declares {list(task.classes)}; put classes in the "
        "data's order (source.label_map may map the data's names to the task's wording)"
    )


def check_class_names(task: Task, table: Table, column: str) -> dict[str, str]:
    """Before any label is decoded (a wrong class list is the cause to report, not the labels it makes
    out of range): the data's own class names against the task's classes, for integer labels."""
    names = table.class_names.get(column)
    if task.source.label_encoding not in NAMED_ENCODINGS or not _informative(names):
        return {}
    return _check_order(task, names, f"{table.where} ({table.names_source})")


def check_labels(task: Task, table: Table, column: str, labels: Sequence[int]) -> None:
    """After decoding: refuse what `unverified` leaves open and the data cannot confirm (module docstring)."""
    facts = unverified_facts(task)
    if task.source.label_encoding in NAMED_ENCODINGS:
        names = table.class_names.get(column)
        if not _informative(names) and facts & {"class order", "class names"}:
            digits = f" (its {table.names_source} are only {list(names)})" if names else ""
            raise TaskError(
                f"task '{task.name}': {table.where} column '{column}': the class order is unverified "
                f"({_unverified(task, 'class order', 'class names')}) and the data names no classes to "
                f"check it against{digits}; it holds the labels {values_held(labels)}; confirm the order at "
                "the source, then remove the entry from the task's unverified list"
            )
        return
    if task.source.label_encoding != "string" or not facts & {"class names", "label strings"}:
        return
    seen = set(labels)
    missing = [c for i, c in enumerate(task.classes) if i not in seen]
    if missing:
        cells = table.column(task, "label_column")
        raise TaskError(
            f"task '{task.name}': {table.where} column '{column}': classes {missing} never occur, and "
            f"the raw labels are unverified ({_unverified(task, 'class names', 'label strings')}); the "
            f"data holds {values_held(cells)}: fix classes and source.label_map to these values"
        )
