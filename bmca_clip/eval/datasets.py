"""Dataset loaders for evaluation tasks, chosen by a task's `source.loader` through LOADERS.

Every loader returns a torch Dataset of one of two shapes, by task type:
- classification: `ImageLabelDataset`, items `(image_tensor, label_int)`, label i meaning classes[i];
- retrieval: `ImageCaptionDataset`, items `(image_tensor, image_index)`, with `.captions[i]` the list of
  captions of image i.
Images are opened with PIL, converted to RGB (grayscale CXR and OCT become 3 equal channels) and passed
through the model's preprocess transform. 16-bit images are NOT rescaled (PIL clips them): a loader for
such data must rescale first. The table is checked on load (columns, labels, files on disk); a
mismatch raises TaskError naming the task, the file, and what was found versus expected.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from bmca_clip.eval.tasks import Task, TaskError

# How to create a missing data folder, by task domain; {data_root} is filled in.
PREPARE_HINTS = {
    "synthetic": "create it with: python -m bmca_clip.data.synthetic --out {data_root}/synthetic",
}
DEFAULT_PREPARE_HINT = (
    "download or mirror the dataset there (see the task's source block), or pass another data_root"
)
_SHOW = 3  # bad rows quoted in an error message


def _open_rgb(path: Path, preprocess: Callable, task_name: str):
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise TaskError(f"task '{task_name}': cannot read image {path}: {exc}") from exc
    return preprocess(rgb)


class ImageLabelDataset(Dataset):
    """Classification items: (preprocessed image, integer label)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], preprocess: Callable, task_name: str):
        self.paths, self.labels = list(paths), list(labels)
        self.preprocess, self.task_name = preprocess, task_name

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return _open_rgb(self.paths[i], self.preprocess, self.task_name), self.labels[i]


class ImageCaptionDataset(Dataset):
    """Retrieval items: (preprocessed image, its index); `captions[i]` lists image i's captions."""

    def __init__(
        self, paths: Sequence[Path], captions: Sequence[list[str]], preprocess: Callable, task_name: str
    ):
        self.paths, self.captions = list(paths), [list(c) for c in captions]
        self.preprocess, self.task_name = preprocess, task_name

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return _open_rgb(self.paths[i], self.preprocess, self.task_name), i

    @property
    def text_to_image(self) -> torch.Tensor:
        """For each caption, flattened in image order, the index of its image."""
        return torch.tensor([i for i, caps in enumerate(self.captions) for _ in caps], dtype=torch.long)


def data_dir(task: Task, data_root: str | Path) -> Path:
    """The task's data folder: source.path under data_root, or source.path itself when absolute."""
    return Path(data_root) / task.source.path


def _int_labels(task: Task) -> Callable[[str], int]:
    n = len(task.classes)

    def decode(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"label '{raw}' is not an integer (label_encoding: int)") from None
        if not 0 <= value < n:
            raise ValueError(
                f"label {value} is out of range; expected 0..{n - 1} indexing classes {list(task.classes)}"
            )
        return value

    return decode


def _string_labels(task: Task) -> Callable[[str], int]:
    index = {name: i for i, name in enumerate(task.classes)}
    if task.source.label_map is not None:
        lookup = {raw.strip(): index[name] for raw, name in task.source.label_map.items()}
        key, expected = str.strip, f"a key of label_map {sorted(lookup)}"
    else:
        lookup = {name.strip().lower(): i for name, i in index.items()}
        key, expected = (lambda s: s.strip().lower()), f"one of the classes {list(task.classes)} (any case)"

    def decode(raw: str) -> int:
        if key(raw) not in lookup:
            raise ValueError(f"unknown label '{raw}'; expected {expected}")
        return lookup[key(raw)]

    return decode


# label_encoding -> factory(task) -> decode(raw cell) -> class index; decode raises ValueError with the reason.
LABEL_ENCODINGS: dict[str, Callable[[Task], Callable[[str], int]]] = {
    "int": _int_labels,
    "string": _string_labels,
}


def _read_table(task: Task, data_root: str | Path) -> tuple[Path, list[dict]]:
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
    columns = [getattr(task.source, key) for key in ("image_column", "label_column", "caption_column")]
    for key, column in zip(("image_column", "label_column", "caption_column"), columns, strict=True):
        if column is not None and column not in header:
            raise TaskError(
                f"task '{task.name}': {table} has no column '{column}' (source.{key}); its header is {header}"
            )
    if not rows:
        raise TaskError(f"task '{task.name}': {table} has a header but no rows")
    return table, rows


def _image_paths(task: Task, table: Path, rows: list[dict]) -> list[Path]:
    # Relative image paths are relative to the table's folder; absolute ones are kept.
    paths = [table.parent / row[task.source.image_column] for row in rows]
    missing = [str(p) for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        raise TaskError(
            f"task '{task.name}': {table}: {len(missing)} image file(s) in column "
            f"'{task.source.image_column}' do not exist, e.g. {missing[:_SHOW]}"
        )
    return paths


def _classification_from_rows(task: Task, table: Path, rows: list[dict], preprocess: Callable) -> Dataset:
    decode = LABEL_ENCODINGS[task.source.label_encoding](task)
    labels, errors = [], []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            labels.append(decode(row[task.source.label_column] or ""))
        except ValueError as exc:
            errors.append(f"line {line}: {exc}")
    if errors:
        raise TaskError(
            f"task '{task.name}': {table} column '{task.source.label_column}': {len(errors)} bad label(s); "
            + "; ".join(errors[:_SHOW])
        )
    return ImageLabelDataset(_image_paths(task, table, rows), labels, preprocess, task.name)


def _retrieval_from_rows(task: Task, table: Path, rows: list[dict], preprocess: Callable) -> Dataset:
    by_image: dict[Path, list[str]] = {}  # insertion order = first appearance in the table
    for line, (path, row) in enumerate(zip(_image_paths(task, table, rows), rows, strict=True), start=2):
        caption = (row[task.source.caption_column] or "").strip()
        if not caption:
            raise TaskError(f"task '{task.name}': {table} line {line}: empty '{task.source.caption_column}'")
        by_image.setdefault(path, []).append(caption)
    return ImageCaptionDataset(list(by_image), list(by_image.values()), preprocess, task.name)


# task type -> builder of its dataset from CSV rows; a new task type adds its builder here.
_CSV_BUILDERS = {"classification": _classification_from_rows, "retrieval": _retrieval_from_rows}


def load_csv(task: Task, data_root: str | Path, preprocess: Callable) -> Dataset:
    """A folder holding a CSV table (source.file) whose rows name image files and labels or captions."""
    if task.type not in _CSV_BUILDERS:
        raise TaskError(f"task '{task.name}': the csv loader cannot build '{task.type}' tasks")
    table, rows = _read_table(task, data_root)
    return _CSV_BUILDERS[task.type](task, table, rows, preprocess)


# source.loader -> function(task, data_root, preprocess) -> Dataset. Later: hf_dataset, zip_split_json, wds.
LOADERS: dict[str, Callable[[Task, str | Path, Callable], Dataset]] = {"csv": load_csv}


def build_dataset(task: Task, data_root: str | Path, preprocess: Callable) -> Dataset:
    """The task's dataset, read by its source.loader; TaskError when the data does not match the task."""
    return LOADERS[task.source.loader](task, data_root, preprocess)
