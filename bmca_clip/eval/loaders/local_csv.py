"""Loader csv: a table of image paths (relative to its folder) and labels or captions, under data_root."""

from __future__ import annotations

import csv
from pathlib import Path

from bmca_clip.errors import TaskError
from bmca_clip.eval.loaders.table import SHOW, Table, file_images
from bmca_clip.eval.spec import Task

# How to create a missing csv data folder, by task domain; {data_root} is filled in.
PREPARE_HINTS = {
    "synthetic": "create it with: python -m bmca_clip.data.synthetic --out {data_root}/synthetic",
}
DEFAULT_PREPARE_HINT = (
    "download or mirror the dataset there (see the task's source block), or pass another data_root"
)


def data_dir(task: Task, data_root: str | Path) -> Path:
    """The task's data folder: source.path under data_root, or source.path itself when absolute."""
    return Path(data_root) / task.source.path


def read_csv(task: Task, data_root: str | Path) -> Table:
    folder = data_dir(task, data_root)
    if not folder.is_dir():
        hint = PREPARE_HINTS.get(task.domain, DEFAULT_PREPARE_HINT).format(data_root=data_root)
        raise TaskError(f"task '{task.name}': data folder {folder} does not exist; {hint}")
    table = folder / (task.source.file or f"{task.source.split}.csv")
    if not table.is_file():
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise TaskError(f"task '{task.name}': table {table} does not exist; {folder} holds {found}")
    with table.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: tolerate a spreadsheet's BOM
        reader = csv.DictReader(f)
        rows, header = list(reader), reader.fieldnames or []
    for key in ("image_column", "label_column", "caption_column", "group_column"):
        column = getattr(task.source, key)
        if column is not None and column not in header:
            raise TaskError(
                f"task '{task.name}': {table} has no column '{column}' (source.{key}); its header is {header}"
            )
    if not rows:
        raise TaskError(f"task '{task.name}': {table} has a header but no rows")
    # Relative image paths are relative to the table's folder; absolute ones are kept.
    paths = [table.parent / row[task.source.image_column] for row in rows]
    missing = [str(p) for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        raise TaskError(
            f"task '{task.name}': {table}: {len(missing)} image file(s) in column "
            f"'{task.source.image_column}' do not exist, e.g. {missing[:SHOW]}"
        )
    columns = {name: [row[name] or "" for row in rows] for name in header if name != task.source.image_column}
    images = {task.source.image_column: file_images(paths)}
    return Table(str(table), columns, images, list(range(2, len(rows) + 2)), "line")  # line 1: header
