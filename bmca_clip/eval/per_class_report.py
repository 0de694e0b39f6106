"""per_class.md: each task's per-class results as Markdown tables, beside summary.md, for a reader who will
not open the JSON. No torch: it reads the `per_class` object of results or records (per_class.py).

One section per task (suite order), and in it one table per model (run order, headed by its label and
n): a table per model keeps every table six columns wide whatever the number of models, and a task's
models stay next to each other.
(Columns per model would put three intervals per model on each row, unreadable for three models; a file
per model folder would scatter one task's models over several files: comparing them is comparison.md's
job, reading one model's classes is this file's.) Rows are the classes in label order, exactly as the
JSON holds them, so a 100-class task is a 100-row table; a line above it names the classes with the
lowest sensitivity, the ones a reader of a long table looks for first.

    classification, multiple choice  class | support | sensitivity [CI] | precision [CI] (| specificity [CI]
                                     for binary tasks); rates in percent, 1 decimal; n/a where undefined
    multilabel                       label | support | average precision (no interval is stored)
    retrieval                        no section (no classes)

A failed task, a k-shot result (a mean over draws of several classifiers: none is "the" classifier whose
classes to report), or a record written before results held per-class numbers gets one line saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bmca_clip.eval.summary import _markdown
from bmca_clip.io import atomic_write

REPORT_FILE = "per_class.md"
_WEAKEST = 3  # classes named in the "lowest sensitivity" line


def _field(item, key: str):
    """A key of a JSON record or an attribute of a TaskResult (None when absent)."""
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _rate(value: float | None, bounds: list | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * value:.1f}"
    return text if not bounds else f"{text} [{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def _number(value) -> str:
    return "n/a" if value is None else f"{value:g}"


def _rates_table(per_class: dict) -> list[str]:
    """The classification / multiple-choice table, preceded by the lowest-sensitivity line."""
    names = ["recall", "precision"] + (["specificity"] if "specificity" in per_class else [])
    header = ["class", "support", "sensitivity [95% CI]", "precision (PPV) [95% CI]"]
    header += ["specificity [95% CI]"] if "specificity" in per_class else []
    rows = []
    for k, name in enumerate(per_class["classes"]):
        rates = [
            _rate(per_class[r][k], per_class[f"{r}_ci"][k] if per_class.get(f"{r}_ci") else None)
            for r in names
        ]
        rows.append([str(name), _number(per_class["support"][k]), *rates])
    scored = [(r, c) for r, c in zip(per_class["recall"], per_class["classes"], strict=True) if r is not None]
    lines = []
    if len(scored) > _WEAKEST:
        weakest = sorted(scored, key=lambda pair: pair[0])[:_WEAKEST]
        lines += ["Lowest sensitivity: " + ", ".join(f"{c} {_rate(r)}" for r, c in weakest) + ".", ""]
    return [*lines, _markdown(header, rows)]


def _ap_table(per_class: dict) -> list[str]:
    rows = [
        [str(name), _number(support), _rate(ap)]
        for name, support, ap in zip(
            per_class["classes"], per_class["support"], per_class["average_precision"], strict=True
        )
    ]
    return [_markdown(["label", "support", "average precision"], rows)]


def _model_lines(item) -> list[str]:
    """The lines of one model's result for one task: a table, or one line saying why there is none."""
    if _field(item, "status") != "ok":
        return ["_failed: no per-class results._"]
    per_class = _field(item, "per_class")
    if not per_class and _field(item, "type") == "k_shot":
        return ["_k-shot scores are means over draws of several classifiers: no per-class results._"]
    if not per_class:
        return ["_no per-class results in this record (scored before they were recorded; run it again)._"]
    if "average_precision" in per_class:
        return _ap_table(per_class)
    return _rates_table(per_class)


def _intervals_note(items: list) -> str:
    ci = next((pc["ci"] for item in items if (pc := _field(item, "per_class") or {}).get("ci")), None)
    if ci is None:
        return "no intervals were computed"
    return (
        f"[low, high] is the {round(100 * ci.get('level', 0.95))}% {ci.get('method', 'bootstrap')} interval "
        f"({ci.get('n_resamples')} resamples by {ci.get('unit', 'item')}, seed {ci.get('seed')})"
    )


def format_per_class(results_by_model: dict[str, list], tasks: Sequence[dict] | None = None) -> str:
    """The Markdown of per_class.md (module docstring) for results or records per model label; tasks
    (task_info dicts) fixes the order of the sections (default: as the results come)."""
    by_task: dict[str, dict[str, object]] = {t["name"]: {} for t in tasks or []}
    kinds = {t["name"]: t.get("type") for t in tasks or []}
    for model, items in results_by_model.items():
        for item in items:
            by_task.setdefault(_field(item, "task"), {})[model] = item
            kinds[_field(item, "task")] = kinds.get(_field(item, "task")) or _field(item, "type")
    all_items = [item for found in by_task.values() for item in found.values()]
    lines = [
        "# Per-class results",
        "",
        "Per class, in label order: support (items of that class in the test split), sensitivity (recall: "
        "the share of the class's items predicted as it), precision (positive predictive value: the share of "
        "the items predicted as the class that are it) and, for binary tasks, specificity (the share of the "
        f"other class's items not predicted as it); in percent, {_intervals_note(all_items)}. Multilabel "
        "tasks: support and average precision per label. n/a: undefined (a class never present or never "
        "predicted). The numbers are each task JSON's `per_class`.",
    ]
    for task, found in by_task.items():
        if kinds.get(task) == "retrieval" or not found:
            continue
        lines += ["", f"## {task}"]
        for model, item in found.items():
            n = _field(item, "n")
            heading = f"### {model}" + (f" (n={n})" if n is not None else "")
            lines += ["", heading, "", *_model_lines(item)]
    return "\n".join(lines) + "\n"


def write_per_class_report(
    results_by_model: dict[str, list], out_dir: str | Path, tasks: Sequence[dict] | None = None
) -> Path:
    """Write out_dir/per_class.md (module docstring) and return its path."""
    path = Path(out_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, format_per_class(results_by_model, tasks))
    return path
