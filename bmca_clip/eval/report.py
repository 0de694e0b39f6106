"""Evaluation outputs: one JSON file per task and model, and a summary table across models.

Per-task JSON (`<out_dir>/<task>.json`, written atomically), schema_version 1:
    schema_version  int      1; bumped when a key changes meaning or goes away
    task            str      task name (conf/tasks/<task>.yaml)
    type            str      classification | retrieval
    domain          str      e.g. pathology, radiology, synthetic
    status          str      "ok" | "failed"
    main_metric     str      name of the headline metric, a key of metrics
    metrics         {str: float | null}  fractions in [0, 1]; null when undefined (see notes); never NaN
    notes           {str: str}  for each null metric, the reason (e.g. "only class 0 is present")
    n               int | null  number of images scored (null when failed)
    chance          float | null  main metric of random guessing: 1/K for classification, a random
                                  ranking's expected recall for retrieval
    classes         [str]    class names in label order, as filled into the templates
    templates       [str]    prompt templates, positional {}
    source          {loader, path, file, image_column, label_column, caption_column, label_encoding,
                     label_map, revision, split}  the task's data declaration
    licence         str | null  the data's licence
    error           str | null  why the task failed
    seconds         float    wall time of the task
    provenance      {model, pretrained, checkpoint, checkpoint_sha256, versions {python, torch,
                     open_clip, bmca_clip}, device, dtype, created}; see make_provenance

Summary (`write_summary`): summary.md holds the table of format_table (main metric in percent, one
column per model, chance and mean rows) plus the failures; summary.csv is tidy, one row per
(model, task): model, task, type, domain, status, main_metric, value, chance, with value and chance as
fractions like the JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import platform
import tempfile
from pathlib import Path

import open_clip
import torch

import bmca_clip
from bmca_clip.eval.harness import TaskResult

SCHEMA_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def make_provenance(
    model_name: str,
    device: str | torch.device,
    dtype: str = "float32",
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
) -> dict:
    """Where the numbers came from: model, weights (hashed when a checkpoint file is given), versions."""
    return {
        "model": model_name,
        "pretrained": pretrained,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "bmca_clip": bmca_clip.__version__,
        },
        "device": str(device),
        "dtype": dtype,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _atomic_write(path: Path, text: str) -> None:
    # A unique tmp name in the same folder: concurrent writers never share it, and os.replace is atomic.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def task_record(result: TaskResult, provenance: dict) -> dict:
    """The JSON object for one result (schema in the module docstring)."""
    record = {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(result), "provenance": provenance}
    return record


def write_task_json(result: TaskResult, out_dir: str | Path, provenance: dict) -> Path:
    """Write out_dir/<task>.json atomically and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result.task}.json"
    # allow_nan=False: a NaN slipping through is a bug to surface, not to write as invalid JSON.
    _atomic_write(path, json.dumps(task_record(result, provenance), indent=2, allow_nan=False) + "\n")
    return path


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _cell(result: TaskResult | None) -> str:
    if result is None:
        return "-"
    return "failed" if result.status != "ok" else _pct(result.main_value)


def _mean_cell(results: list[TaskResult], n_tasks: int) -> str:
    values = [r.main_value for r in results if r.main_value is not None]
    if not values:
        return "n/a"
    # A mean over fewer tasks than the table holds is not comparable across models: flag it.
    flag = "" if len(values) == n_tasks else f" ({len(values)}/{n_tasks})"
    return _pct(sum(values) / len(values)) + flag


def _table_rows(results_by_model: dict[str, list[TaskResult]]) -> tuple[list[str], list[list[str]]]:
    models = list(results_by_model)
    by_task: dict[str, dict[str, TaskResult]] = {}
    for model, results in results_by_model.items():
        for result in results:
            by_task.setdefault(result.task, {})[model] = result
    rows, chances = [], []
    for task, per_model in by_task.items():
        first = next(iter(per_model.values()))
        chance = next((r.chance for r in per_model.values() if r.chance is not None), None)
        chances += [] if chance is None else [chance]
        rows.append(
            [task, first.domain, first.main_metric, _pct(chance), *(_cell(per_model.get(m)) for m in models)]
        )
    mean = ["mean", "", "", _pct(sum(chances) / len(chances)) if chances else "n/a"]
    mean += [_mean_cell(results_by_model[m], len(by_task)) for m in models]
    return ["task", "domain", "metric", "chance", *models], [*rows, mean]


def format_table(results_by_model: dict[str, list[TaskResult]]) -> str:
    """Markdown table: one row per task, one column per model with the main metric in percent (2
    decimals), the chance level, and a last row with the unweighted mean over tasks."""
    header, rows = _table_rows(results_by_model)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _failures(results_by_model: dict[str, list[TaskResult]]) -> list[str]:
    return [
        f"- {model} / {r.task}: {r.error}"
        for model, results in results_by_model.items()
        for r in results
        if r.status != "ok"
    ]


def write_summary(results_by_model: dict[str, list[TaskResult]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write out_dir/summary.md (the table and any failures) and out_dir/summary.csv (tidy, fractions)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = [
        "# Zero-shot evaluation",
        "",
        "Main metric per task, in percent.",
        "",
        format_table(results_by_model),
    ]
    failures = _failures(results_by_model)
    if failures:
        markdown += ["", "## Failed tasks", "", *failures]
    md_path, csv_path = out_dir / "summary.md", out_dir / "summary.csv"
    _atomic_write(md_path, "\n".join(markdown) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "task", "type", "domain", "status", "main_metric", "value", "chance"])
    for model, results in results_by_model.items():
        for r in results:
            writer.writerow(
                [model, r.task, r.type, r.domain, r.status, r.main_metric, r.main_value, r.chance]
            )
    _atomic_write(csv_path, buffer.getvalue())
    return md_path, csv_path
