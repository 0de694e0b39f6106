"""Label decoders: how a raw cell of the data becomes what a task type scores, apart from the scorers.

- LABEL_ENCODINGS (source.label_encoding -> factory(task) -> decoder): int, string, bool, sequence_first
  and split_json make one class index per row; detection_crops one (crop box, class) per kept box;
  mask_presence a multi-hot tensor from a segmentation mask (MaskPresence).
- parse_question: one multiple-choice question (question, options, answer index) out of a questions cell.
String labels and label_map keys compare by `normalise` (case-insensitive, `_` and `-` as spaces).
Decoders raise ValueError for a bad cell; the dataset builders collect those into one TaskError.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bmca_clip.errors import TaskError
from bmca_clip.eval.spec import Task

Box = tuple[float, float, float, float]  # PIL crop box: left, upper, right, lower
# Encodings whose raw labels may be renamed by source.label_map.
MAPPED_ENCODINGS = ("string", "bool", "mask_presence", "detection_crops")
# Integer labels whose data may name its classes (ClassLabel names, classnames.txt, the split JSON): there
# label_map maps those names to the task's classes, and the load checks the order (verify.py).
NAMED_ENCODINGS = ("int", "sequence_first", "split_json")


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


class MaskPresence:
    """A segmentation mask -> multi-hot over classes: class c is present when any pixel holds one of the
    mask values that label_map maps to it. Keys are "#rrggbb" colours (compared in RGB) or integer
    indices (read from the mask's first band: grey masks saved as RGB have three equal bands)."""

    def __init__(self, label_map: Mapping[str, str], classes: Sequence[str]):
        index = {name: i for i, name in enumerate(classes)}
        self.n_classes = len(classes)
        self.colours = all(k.startswith("#") for k in label_map)
        self.values = {(int(k[1:], 16) if self.colours else int(k)): index[c] for k, c in label_map.items()}

    def __repr__(self) -> str:  # part of a dataset's fingerprint
        return (
            f"MaskPresence(colours={self.colours}, values={sorted(self.values.items())}, n={self.n_classes})"
        )

    def __call__(self, mask: Image.Image) -> Tensor:
        if self.colours:
            rgb = np.asarray(mask.convert("RGB"), dtype=np.int64)
            values = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
        else:
            values = np.asarray(mask)
            values = values[..., 0] if values.ndim == 3 else values
        hot = torch.zeros(self.n_classes)
        for value in np.unique(values).tolist():
            if value in self.values:
                hot[self.values[value]] = 1.0
        return hot


def _mask_presence(task: Task) -> MaskPresence:
    return MaskPresence(task.source.label_map, task.classes)


# label_encoding -> factory(task) -> decoder. Classification decoders map (cell, dropped Counter) to a list
# of (crop box or None, class index); mask_presence's maps a mask image to a multi-hot tensor.
# source_schema.py checks on load that the encoding fits the task type and the loader.
LABEL_ENCODINGS: dict[str, Callable[[Task], Callable]] = {
    "int": _one_per_row(_int_label),
    "string": _one_per_row(_string_label),
    "bool": _one_per_row(_bool_label),
    "sequence_first": _one_per_row(_sequence_first),
    "split_json": _one_per_row(_int_label),
    "mask_presence": _mask_presence,
    "detection_crops": _detection_crops,
}


def parse_question(cell, name: str) -> tuple[str, list[str], int] | None:
    """(question, options, answer index) of question `name` in one questions cell, a mapping (or its
    JSON) {name: {question, options, answer}} as µ-Bench's `questions` column; None when it is null.

    The answer may be an index into the options or the option itself. KeyError when the cell has no
    such question at all; ValueError when the entry is malformed."""
    if isinstance(cell, str):
        cell = json.loads(cell)
    if cell is None:
        return None
    if not isinstance(cell, dict):
        raise ValueError(f"expected a mapping of questions, got {str(cell)[:120]}")
    if name not in cell:
        raise KeyError(f"no question '{name}'; the cell has {sorted(cell)}")
    entry = cell[name]
    if not entry or entry.get("question") is None:
        return None
    question, options, answer = entry["question"], entry.get("options"), entry.get("answer")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise ValueError(f"options must be a list of at least 2 strings, got {options!r}")
    if isinstance(answer, str) and answer in options:
        return question, options, options.index(answer)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        return question, options, answer
    raise ValueError(f"answer {answer!r} is neither an index into nor one of its {len(options)} options")
