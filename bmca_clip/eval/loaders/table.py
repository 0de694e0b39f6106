"""The Table every loader returns, and the lazily opened images it holds.

A Table is what every task type starts from: the split's rows, their columns as Python lists, and their
images as an `ImageSource` that opens image i only when an item is read (in a DataLoader worker).
`apply_filter` keeps the rows that source.filter asks for. Imports spec and errors only.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from bmca_clip.errors import TaskError
from bmca_clip.eval.spec import Task

SHOW = 3  # bad rows quoted in an error message


def fail(task: Task, where: str, problem: str) -> TaskError:
    return TaskError(f"task '{task.name}': {where}: {problem}")


# --- images, opened lazily ---


def _load(data: bytes | Path) -> Image.Image:
    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    img.load()  # decode now, so a broken file fails here and a path's file is closed
    return img


@dataclass
class ImageSource:
    """Images by row, opened when asked: read(refs[i]) gives image i's file path or encoded bytes.

    read and name are module-level functions or small objects, so a spawned worker can pickle them."""

    refs: list
    read: Callable[[object], bytes | Path]
    name: Callable[[object], str]  # where image i lives, for messages; equal names, same image

    def __len__(self) -> int:
        return len(self.refs)

    def open(self, i: int) -> Image.Image:
        data = self.read(self.refs[i])
        if data is None:
            raise OSError("the image cell holds no bytes")
        return _load(data)

    def describe(self, i: int) -> str:
        return self.name(self.refs[i])

    def identity(self, i: int) -> str:
        """What image i is, for fingerprints: its place, plus size and mtime for a local file (hub
        files sit in snapshot folders named by commit, and arrow rows name their commit)."""
        if self.read is not Path:
            return self.describe(i)
        stat = os.stat(self.refs[i])
        return f"{self.refs[i]}\0{stat.st_size}\0{stat.st_mtime_ns}"

    def select(self, rows: Sequence[int]) -> ImageSource:
        return replace(self, refs=[self.refs[r] for r in rows])


def file_images(paths: Sequence[Path]) -> ImageSource:
    return ImageSource(list(paths), Path, str)


@dataclass
class Table:
    """A split's rows: plain columns as lists, image columns as ImageSources, all of the same length."""

    where: str  # the file(s) read, for messages
    columns: dict[str, list]
    images: dict[str, ImageSource]
    row_ids: list[int]  # each row's number in the source, for messages ("line 3", "row 17")
    row_word: str = "row"
    class_names: dict[str, list[str]] = field(default_factory=dict)  # a column's ClassLabel names
    names_source: str = "ClassLabel names"  # where class_names come from, for messages (verify.py)
    notes: dict[str, str] = field(default_factory=dict)  # facts for the result's notes

    def __len__(self) -> int:
        return len(self.row_ids)

    def row(self, i: int) -> str:
        return f"{self.row_word} {self.row_ids[i]}"

    def names(self) -> list[str]:
        return [*self.columns, *self.images]

    def column(self, task: Task, key: str, default: str | None = None) -> list:
        """The values of the column that source.<key> names (default when it names none)."""
        name = getattr(task.source, key) or default
        if name not in self.columns:
            found = f"'{name}' holds images" if name in self.images else f"no column '{name}'"
            raise fail(task, self.where, f"{found} (source.{key}); its columns are {self.names()}")
        return self.columns[name]

    def image_column(self, task: Task, key: str = "image_column") -> ImageSource:
        """The images of the column that source.<key> names."""
        name = getattr(task.source, key)
        if name not in self.images:
            found = f"column '{name}' holds no images" if name in self.columns else f"no column '{name}'"
            raise fail(task, self.where, f"{found} (source.{key}); its columns are {self.names()}")
        return self.images[name]

    def select(self, rows: Sequence[int]) -> Table:
        return replace(
            self,
            columns={k: [v[r] for r in rows] for k, v in self.columns.items()},
            images={k: v.select(rows) for k, v in self.images.items()},
            row_ids=[self.row_ids[r] for r in rows],
        )


def _matches(cell, wanted) -> bool:
    # YAML `0` must match a ClassLabel 0 and a CSV "0" alike; None matches only None.
    return cell == wanted or (cell is not None and wanted is not None and str(cell) == str(wanted))


def apply_filter(task: Task, table: Table) -> Table:
    """The rows whose filter columns hold one of the wanted values (source.filter), in order."""
    if not task.source.filter:
        return table
    keep = np.ones(len(table), dtype=bool)
    for column, wanted in task.source.filter.items():
        if column not in table.columns:
            raise fail(
                task,
                table.where,
                f"no column '{column}' to filter on (source.filter); it has {table.names()}",
            )
        allowed = wanted if isinstance(wanted, list) else [wanted]
        keep &= [any(_matches(cell, w) for w in allowed) for cell in table.columns[column]]
    if not keep.any():
        found = {c: Counter(map(str, table.columns[c])).most_common(12) for c in task.source.filter}
        raise fail(task, table.where, f"no row matches filter {task.source.filter}; values found: {found}")
    return table.select(np.flatnonzero(keep).tolist())
