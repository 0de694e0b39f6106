"""Turn a task's rows (a loaders.Table) into the torch Dataset of its type, decoding labels on the way.

Dataset shapes, by task type (BUILDERS):
- classification: `ImageLabelDataset`, items `(image_tensor, label_int)`, label i meaning classes[i];
- multilabel: `ImageMultiLabelDataset`, items `(image_tensor, multi_hot)`, a float tensor [n_classes];
- multiple_choice: `ImageQuestionDataset`, items `(image_tensor, item_index)`, with `.questions[i]`,
  `.options[i]` (that item's own list) and `.answers[i]` (index into it);
- retrieval: `ImageCaptionDataset`, items `(image_tensor, image_index)`, with `.captions[i]` the list of
  captions of image i.
Every dataset carries `.notes` ({key: text}: the hub commit read, items skipped or dropped, ...) that the
harness copies into the result. Images are opened when an item is read, converted to RGB (grayscale CXR
and OCT become 3 equal channels; 16-bit and float images are first stretched min-max to 8 bits, since
PIL would clip them) and passed through the model's preprocess transform. A label that does not decode
raises TaskError naming the task, the file and column, the rows, and what was expected.
`.clusters` (bootstrap.Clusters or None) says which items the bootstrap resamples together: the rows
sharing a source.group_column value, or the crops of one image.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from bmca_clip.data.decode import to_rgb8
from bmca_clip.eval.bootstrap import Clusters
from bmca_clip.eval.loaders import (
    SHOW,
    ImageSource,
    Table,
    apply_filter,
    file_images,
    read_hf_dataset,
    read_hf_parquet,
    read_wds,
    read_zip_split_json,
)
from bmca_clip.eval.multilabel import MaskPresence
from bmca_clip.eval.multiple_choice import parse_question
from bmca_clip.eval.tasks import Task, TaskError
from bmca_clip.eval.verify import check_class_names, check_labels, require_classes, values_held

# How to create a missing csv data folder, by task domain; {data_root} is filled in.
PREPARE_HINTS = {
    "synthetic": "create it with: python -m bmca_clip.data.synthetic --out {data_root}/synthetic",
}
DEFAULT_PREPARE_HINT = (
    "download or mirror the dataset there (see the task's source block), or pass another data_root"
)
Box = tuple[float, float, float, float]  # PIL crop box: left, upper, right, lower


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as training sees it: the same conversion, so a 16-bit image looks alike in both."""
    return to_rgb8(img)


class _ImageItems(Dataset):
    """Shared by every shape: item i's image, optionally cropped to boxes[i], preprocessed."""

    def __init__(self, images, preprocess: Callable, task_name: str, boxes: Sequence[Box] | None = None):
        self.images = images if isinstance(images, ImageSource) else file_images([Path(p) for p in images])
        self.preprocess, self.task_name, self.boxes = preprocess, task_name, boxes
        self.notes: dict[str, str] = {}
        self.clusters: Clusters | None = None  # per item (retrieval: per image); None: independent

    def __len__(self) -> int:
        return len(self.images)

    def payload(self) -> list:
        """What, besides the images, makes the items (labels, captions, options...)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 of everything that makes the items, not the preprocess (cache.py keys features by it)."""
        digest = hashlib.sha256(type(self).__name__.encode())
        for i in range(len(self)):
            digest.update(f"{self.images.identity(i)}\n".encode())
        digest.update(json.dumps([self.boxes, self.payload()], default=repr).encode())
        return digest.hexdigest()

    def image(self, i: int):
        try:
            img = self.images.open(i)
            rgb = to_rgb(img if self.boxes is None else img.crop(self.boxes[i]))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise TaskError(
                f"task '{self.task_name}': cannot read image {self.images.describe(i)}: {exc}"
            ) from exc
        return self.preprocess(rgb)


class ImageLabelDataset(_ImageItems):
    """Classification items: (preprocessed image, integer label)."""

    def __init__(self, images, labels: Sequence[int], preprocess, task_name, boxes=None):
        super().__init__(images, preprocess, task_name, boxes)
        self.labels = list(labels)

    def payload(self) -> list:
        return self.labels

    def __getitem__(self, i: int):
        return self.image(i), self.labels[i]


class ImageMultiLabelDataset(_ImageItems):
    """Multilabel items: (preprocessed image, multi-hot float tensor), targets decoded when read."""

    def __init__(self, images, targets: ImageSource, decode: Callable, preprocess, task_name):
        super().__init__(images, preprocess, task_name)
        self.targets, self.decode = targets, decode

    def payload(self) -> list:
        return [[self.targets.identity(i) for i in range(len(self))], self.decode]

    def target(self, i: int) -> torch.Tensor:
        try:
            return self.decode(self.targets.open(i))
        except (OSError, ValueError) as exc:
            raise TaskError(
                f"task '{self.task_name}': cannot read mask {self.targets.describe(i)}: {exc}"
            ) from exc

    def __getitem__(self, i: int):
        return self.image(i), self.target(i)


class ImageQuestionDataset(_ImageItems):
    """Closed-VQA items: (preprocessed image, its index); options[i] is item i's own list of answers."""

    def __init__(self, images, questions, options, answers, preprocess, task_name):
        super().__init__(images, preprocess, task_name)
        self.questions, self.options, self.answers = (
            list(questions),
            [list(o) for o in options],
            list(answers),
        )

    def payload(self) -> list:
        return [self.questions, self.options, self.answers]

    def __getitem__(self, i: int):
        return self.image(i), i


class ImageCaptionDataset(_ImageItems):
    """Retrieval items: (preprocessed image, its index); `captions[i]` lists image i's captions."""

    def __init__(self, images, captions: Sequence[list[str]], preprocess, task_name):
        super().__init__(images, preprocess, task_name)
        self.captions = [list(c) for c in captions]

    def payload(self) -> list:
        return self.captions

    def __getitem__(self, i: int):
        return self.image(i), i

    @property
    def text_to_image(self) -> torch.Tensor:
        """For each caption, flattened in image order, the index of its image."""
        return torch.tensor([i for i, caps in enumerate(self.captions) for _ in caps], dtype=torch.long)


# --- label encodings ---


def normalise(text) -> str:
    """How string labels and label_map keys compare: case-insensitive, `_` and `-` read as spaces."""
    return re.sub(r"[\s_-]+", " ", str(text)).strip().lower()


def _lookup(task: Task) -> tuple[dict[str, int], str]:
    """normalised raw label -> class index, from label_map or else from the class names; and what it
    expects, for messages."""
    index = {name: i for i, name in enumerate(task.classes)}
    if task.source.label_map is None:
        expected = f"one of the classes {list(task.classes)} (any case)"
        return {normalise(name): i for name, i in index.items()}, expected
    lookup: dict[str, int] = {}
    for raw, name in task.source.label_map.items():
        if lookup.setdefault(normalise(raw), index[name]) != index[name]:
            problem = f"label_map keys that read alike map to different classes: '{raw}'"
            raise TaskError(f"task '{task.name}': source.{problem}")
    return lookup, f"a key of label_map {sorted(task.source.label_map)}"


def _int_label(task: Task) -> Callable[[object], int]:
    n = len(task.classes)

    def decode(raw) -> int:
        value = None
        if isinstance(raw, float):
            value = int(raw) if raw.is_integer() else None
        elif raw is not None and not isinstance(raw, bool):
            try:
                value = int(str(raw).strip())
            except ValueError:
                pass
        if value is None:
            raise ValueError(
                f"label {raw!r} is not an integer (label_encoding: {task.source.label_encoding})"
            )
        if not 0 <= value < n:
            raise ValueError(
                f"label {value} is out of range; expected 0..{n - 1} indexing classes {list(task.classes)}"
            )
        return value

    return decode


def _string_label(task: Task) -> Callable[[object], int]:
    lookup, expected = _lookup(task)

    def decode(raw) -> int:
        if raw is None or normalise(raw) not in lookup:
            raise ValueError(f"unknown label {str(raw)!r}; expected {expected}")
        return lookup[normalise(raw)]

    return decode


def _bool_label(task: Task) -> Callable[[object], int]:
    lookup, expected = _lookup(task) if task.source.label_map else ({"false": 0, "true": 1}, "False or True")
    spelled = {"0": "false", "1": "true"}

    def decode(raw) -> int:
        key = normalise(raw)
        key = key if key in lookup else spelled.get(key, key)
        if key not in lookup:
            raise ValueError(f"label {raw!r} is not a boolean; expected {expected}")
        return lookup[key]

    return decode


def _sequence_first(task: Task) -> Callable[[object], int]:
    as_int = _int_label(task)

    def decode(raw) -> int:
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ValueError(f"label {raw!r} is not a non-empty sequence (label_encoding: sequence_first)")
        return as_int(raw[0])

    return decode


def _one_per_row(factory: Callable[[Task], Callable[[object], int]]):
    """A single-label decoder as a classification decoder: one uncropped item per row."""

    def make(task: Task):
        decode = factory(task)
        return lambda raw, dropped: [(None, decode(raw))]

    return make


def _detection_crops(task: Task):
    """objects {bbox: [[x, y, w, h], ...] (COCO), category: [...]} -> one (box, class) per kept box."""
    by_key = _lookup(task)[0] if task.source.label_map else {str(i): i for i in range(len(task.classes))}

    def decode(raw, dropped: Counter) -> list[tuple[Box, int]]:
        if isinstance(raw, list):  # a list of {bbox, category} instead of datasets' struct of lists
            raw = {"bbox": [o.get("bbox") for o in raw], "category": [o.get("category") for o in raw]}
        if not isinstance(raw, dict) or not {"bbox", "category"} <= set(raw):
            raise ValueError(f"expected objects {{bbox, category}}, got {str(raw)[:120]}")
        items = []
        for bbox, category in zip(raw["bbox"], raw["category"], strict=True):
            key = normalise(category) if task.source.label_map else str(category)
            x, y, w, h = (float(v) for v in bbox)
            if key not in by_key:
                dropped[f"category {category} (not in label_map/classes)"] += 1
            elif w < 1 or h < 1:
                dropped["boxes under 1 px"] += 1
            else:
                items.append(((x, y, x + w, y + h), by_key[key]))
        return items

    return decode


def _mask_presence(task: Task) -> MaskPresence:
    return MaskPresence(task.source.label_map, task.classes)


# label_encoding -> factory(task) -> decoder. Classification decoders map (cell, dropped Counter) to a list
# of (crop box or None, class index); mask_presence's maps a mask image to a multi-hot tensor. tasks.py
# checks on load that the encoding fits the task type and the loader.
LABEL_ENCODINGS: dict[str, Callable[[Task], Callable]] = {
    "int": _one_per_row(_int_label),
    "string": _one_per_row(_string_label),
    "bool": _one_per_row(_bool_label),
    "sequence_first": _one_per_row(_sequence_first),
    "split_json": _one_per_row(_int_label),
    "mask_presence": _mask_presence,
    "detection_crops": _detection_crops,
}


# --- csv ---


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


# --- the registry ---


@dataclass(frozen=True)
class Loader:
    """A loader and what it takes from a task YAML; tasks.py checks the YAML against it on load."""

    read: Callable[[Task, str | Path], Table]
    types: tuple[str, ...]  # task types it can feed
    encodings: tuple[str, ...]  # label encodings it can decode (the first is the default)
    required: tuple[str, ...]  # loader-specific source keys that must be set
    optional: tuple[str, ...] = ()  # other loader-specific source keys it reads
    has_columns: bool = True  # False: labels come from the split file, so no image/label columns


# Source keys that only some loaders read; a YAML setting one its loader ignores fails on load.
LOADER_KEYS = (
    "path",
    "file",
    "repo_id",
    "revision",
    "config_name",
    "data_files",
    "archive",
    "split_file",
    "filter",
)
_TABLE_ENCODINGS = ("int", "string", "bool", "sequence_first", "mask_presence", "detection_crops")
_ALL_TYPES = ("classification", "multiple_choice", "multilabel", "retrieval")

LOADERS: dict[str, Loader] = {
    "csv": Loader(
        read_csv, ("classification", "retrieval"), ("int", "string", "bool"), ("path",), ("file", "filter")
    ),
    "hf_dataset": Loader(
        read_hf_dataset, _ALL_TYPES, _TABLE_ENCODINGS, ("repo_id",), ("revision", "config_name", "filter")
    ),
    "hf_parquet": Loader(
        read_hf_parquet, _ALL_TYPES, _TABLE_ENCODINGS, ("repo_id", "data_files"), ("revision", "filter")
    ),
    "zip_split_json": Loader(
        read_zip_split_json,
        ("classification",),
        ("split_json",),
        ("repo_id", "archive", "split_file"),
        ("revision",),
        has_columns=False,
    ),
    "wds": Loader(read_wds, ("classification",), ("int", "string"), ("repo_id",), ("revision",)),
}


# --- builders, one per task type ---


def _bad(
    task: Task, table: Table, column: str, errors: list[str], what: str = "label", held=None
) -> TaskError:
    values = f"; the column holds {values_held(held)}" if held is not None else ""
    return TaskError(
        f"task '{task.name}': {table.where} column '{column}': {len(errors)} bad {what}(s); "
        + "; ".join(errors[:SHOW])
        + values
    )


def _clusters(task: Task, table: Table, rows: list[int]) -> Clusters | None:
    """The source.group_column cluster of each item (from its row); an empty cell is its own cluster."""
    if task.source.group_column is None:
        return None
    values = table.column(task, "group_column")
    cells = [values[r] if values[r] not in (None, "") else ("no group", i) for i, r in enumerate(rows)]
    return Clusters.of(cells, task.source.group_column)


def _classification(task: Task, table: Table, preprocess: Callable) -> Dataset:
    column = task.source.label_column or "label"  # zip_split_json's table calls its labels "label"
    decode = LABEL_ENCODINGS[task.source.label_encoding](task)
    items, errors, dropped = [], [], Counter()  # items: (row, crop box or None, class index)
    cells = table.column(task, "label_column", default="label")
    require_classes(task, table, column, cells)
    notes = check_class_names(task, table, column)
    for i, cell in enumerate(cells):
        try:
            items += [(i, box, label) for box, label in decode(cell, dropped)]
        except ValueError as exc:
            errors.append(f"{table.row(i)}: {exc}")
    if errors:  # string labels: list every raw value, so one failed load says how to fix the map
        raise _bad(
            task, table, column, errors, held=cells if task.source.label_encoding == "string" else None
        )
    if not items:
        raise TaskError(
            f"task '{task.name}': {table.where} column '{column}': no item left; dropped {dict(dropped)}"
        )
    rows, boxes, labels = (list(values) for values in zip(*items, strict=True))
    check_labels(task, table, column, labels)
    images = table.image_column(task)
    cropped = any(b is not None for b in boxes)
    dataset = ImageLabelDataset(
        images.select(rows) if cropped else images, labels, preprocess, task.name, boxes if cropped else None
    )
    dataset.notes = notes
    dataset.clusters = _clusters(task, table, rows) or (Clusters.of(rows, "image") if cropped else None)
    if dropped:
        dataset.notes["dropped"] = f"{sum(dropped.values())} boxes not scored: {dict(dropped)}"
    return dataset


def _multilabel(task: Task, table: Table, preprocess: Callable) -> Dataset:
    masks = table.image_column(task, "label_column")
    decode = LABEL_ENCODINGS[task.source.label_encoding](task)
    return ImageMultiLabelDataset(table.image_column(task), masks, decode, preprocess, task.name)


def _multiple_choice(task: Task, table: Table, preprocess: Callable) -> Dataset:
    cells, name = table.column(task, "questions_column"), task.source.question
    rows, items, errors = [], [], []  # items: (question, options, answer index)
    for i, cell in enumerate(cells):
        try:
            item = parse_question(cell, name)
        except KeyError as exc:  # the question is not there at all: a declaration mistake, not one bad row
            raise TaskError(
                f"task '{task.name}': {table.where} column '{task.source.questions_column}' {table.row(i)}: "
                f"{exc.args[0]} (source.question)"
            ) from None
        except ValueError as exc:
            errors.append(f"{table.row(i)}: {exc}")
            continue
        if item is not None:
            rows.append(i)
            items.append(item)
    if errors:
        raise _bad(task, table, task.source.questions_column, errors, "question")
    if not rows:
        raise TaskError(f"task '{task.name}': {table.where}: no row has a '{name}' question")
    images = table.image_column(task).select(rows)
    questions, options, answers = zip(*items, strict=True)
    dataset = ImageQuestionDataset(images, questions, options, answers, preprocess, task.name)
    if len(rows) < len(cells):
        dataset.notes["skipped"] = (
            f"{len(cells) - len(rows)} of {len(cells)} images have a null '{name}' question"
        )
    return dataset


def _retrieval(task: Task, table: Table, preprocess: Callable) -> Dataset:
    images, column = table.image_column(task), task.source.caption_column
    by_image: dict[str, tuple[int, list[str]]] = {}  # insertion order = first appearance
    for i, cell in enumerate(table.column(task, "caption_column")):
        captions = [
            c.strip()
            for c in (cell if isinstance(cell, list) else [cell])
            if isinstance(c, str) and c.strip()
        ]
        if not captions:
            raise TaskError(f"task '{task.name}': {table.where} {table.row(i)}: empty '{column}'")
        by_image.setdefault(images.describe(i), (i, []))[1].extend(captions)
    rows = [row for row, _ in by_image.values()]
    dataset = ImageCaptionDataset(
        images.select(rows), [caps for _, caps in by_image.values()], preprocess, task.name
    )
    dataset.clusters = _clusters(task, table, rows)  # None: the harness clusters captions by image
    return dataset


# task type -> builder(task, table, preprocess) -> Dataset; a new task type adds its builder here.
BUILDERS: dict[str, Callable[[Task, Table, Callable], Dataset]] = {
    "classification": _classification,
    "multilabel": _multilabel,
    "multiple_choice": _multiple_choice,
    "retrieval": _retrieval,
}


def build_dataset(task: Task, data_root: str | Path, preprocess: Callable) -> Dataset:
    """The task's dataset, read by its source.loader; TaskError when the data does not match the task."""
    table = apply_filter(task, LOADERS[task.source.loader].read(task, data_root))
    dataset = BUILDERS[task.type](task, table, preprocess)
    dataset.notes = {**table.notes, **dataset.notes}
    return dataset
