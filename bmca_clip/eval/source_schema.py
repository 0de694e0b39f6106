"""The `source:` block of a task YAML, checked against its loader (loaders.LOADERS) and its type (types/).

Checked on load: the keys each loader needs or does not read, the columns the type needs, whether the
loader can feed the type at all (`feeds`), the label encodings that fit both (the default is the first
that does), label_map against classes, the filter's shape, and group_column (only for types whose results
carry bootstrap CIs). Each failure is one TaskError naming the file, the key and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from bmca_clip.eval.checks import check_choice, check_keys, fail, string_list
from bmca_clip.eval.decode import LABEL_ENCODINGS, MAPPED_ENCODINGS, NAMED_ENCODINGS
from bmca_clip.eval.loaders import LOADER_KEYS, LOADERS, Loader
from bmca_clip.eval.spec import Source
from bmca_clip.eval.types import TASK_TYPES
from bmca_clip.eval.types.base import TaskType

_STRING_KEYS = (
    "loader", "repo_id", "revision", "path", "file", "split", "config_name", "archive", "split_file",
    "image_column", "label_column", "caption_column", "questions_column", "question", "label_encoding",
    "group_column",
)  # fmt: skip


def feeds(loader: Loader, task_type: TaskType) -> bool:
    """Whether the loader can make the type's items: one of the label encodings the type needs, or, for a
    type that reads its columns as they are, columns beyond image and label (structured when needed)."""
    if task_type.encodings:
        return any(e in loader.encodings for e in task_type.encodings)
    return loader.other_columns and (loader.structured or not task_type.needs_structured)


def _check_loader_keys(file: Path, raw: dict, loader_name: str, type_name: str, task_type: TaskType) -> None:
    loader = LOADERS[loader_name]
    if not feeds(loader, task_type):
        fed = [name for name, other in TASK_TYPES.items() if feeds(loader, other)]
        raise fail(
            file, "type", f"loader '{loader_name}' cannot feed '{type_name}' tasks; it feeds {', '.join(fed)}"
        )
    for key in LOADER_KEYS:
        if key in raw and key not in (*loader.required, *loader.optional):
            users = [name for name, other in LOADERS.items() if key in (*other.required, *other.optional)]
            raise fail(
                file, f"source.{key}", f"not read by loader '{loader_name}' (only by {', '.join(users)})"
            )
    columns = task_type.columns
    if not loader.has_columns:
        for key in ("image_column", "label_column"):
            if key in raw:
                raise fail(
                    file,
                    f"source.{key}",
                    f"loader '{loader_name}' takes images and labels from split_file; remove it",
                )
        columns = tuple(c for c in columns if c not in ("image_column", "label_column"))
    defaults = {f.name: f.default for f in fields(Source)}  # image_column defaults to "image"
    for key in (*loader.required, *columns):
        if raw.get(key, defaults.get(key)) in (None, ""):
            raise fail(
                file,
                f"source.{key}",
                f"required (loader '{loader_name}', type '{type_name}') but missing or empty",
            )
    for key in _STRING_KEYS:
        if key in raw and not isinstance(raw[key], str):
            raise fail(file, f"source.{key}", f"expected a string, got {raw[key]!r}")


def _check_encoding(file: Path, raw: dict, type_name: str, task_type: TaskType) -> None:
    allowed = [e for e in LOADERS[raw["loader"]].encodings if e in task_type.encodings]
    if "label_encoding" not in raw:
        if allowed:
            raw["label_encoding"] = allowed[0]
        return
    check_choice(file, "source.label_encoding", raw["label_encoding"], LABEL_ENCODINGS)
    if raw["label_encoding"] not in allowed:
        fits = ", ".join(allowed) or "none: remove label_encoding"
        raise fail(
            file,
            "source.label_encoding",
            f"'{raw['label_encoding']}' does not fit loader '{raw['loader']}' with type '{type_name}'; allowed: {fits}",
        )


def _check_label_map(file: Path, raw: dict, classes: list) -> None:
    label_map, encoding = raw.get("label_map"), raw.get("label_encoding")
    if label_map is None:
        if encoding == "mask_presence":
            raise fail(
                file, "source.label_map", 'mask_presence needs it: {mask value ("#rrggbb" or index): class}'
            )
        if encoding == "bool" and len(classes) != 2:
            raise fail(
                file, "classes", f"label_encoding bool without label_map needs 2 classes, got {len(classes)}"
            )
        return
    if not isinstance(label_map, dict) or not all(isinstance(v, str) for v in label_map.values()):
        raise fail(file, "source.label_map", f"expected a mapping raw label -> class name, got {label_map!r}")
    if encoding not in (*MAPPED_ENCODINGS, *NAMED_ENCODINGS):
        allowed = ", ".join((*MAPPED_ENCODINGS, *NAMED_ENCODINGS))
        raise fail(file, "source.label_map", f"only read with label_encoding {allowed}")
    # YAML reads `0:` or `True:` as int/bool keys; the data's labels are compared as strings.
    raw["label_map"] = label_map = {str(k): v for k, v in label_map.items()}
    unknown = set(label_map.values()) - set(classes)
    if unknown:
        raise fail(file, "source.label_map", f"maps to {sorted(unknown)}, which are not in classes")
    if encoding == "mask_presence":
        colours = [bool(re.fullmatch(r"#[0-9a-fA-F]{6}", k)) for k in label_map]
        if not (all(colours) or all(re.fullmatch(r"-?[0-9]+", k) for k in label_map)):
            raise fail(
                file, "source.label_map", 'mask_presence keys must all be colours "#rrggbb" or all integers'
            )
        never = [c for c in classes if c not in label_map.values()]
        if never:
            raise fail(
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
        raise fail(file, "source.filter", f"expected {{column: value or [values]}}, got {value!r}")


def parse_source(file: Path, raw, type_name: str, classes: list) -> Source:
    """The checked Source of a task of type type_name with these classes (module docstring)."""
    if not isinstance(raw, dict):
        raise fail(file, "source", f"expected a mapping, got {raw!r}")
    check_keys(file, raw, Source, "source.", required=("loader",))
    raw = {k: v for k, v in raw.items() if v is not None}  # null reads as "not set": the default
    check_choice(file, "source.loader", raw["loader"], LOADERS)
    task_type = TASK_TYPES[type_name]
    _check_loader_keys(file, raw, raw["loader"], type_name, task_type)
    if "data_files" in raw:
        files = raw["data_files"]
        raw["data_files"] = string_list(
            file, "source.data_files", [files] if isinstance(files, str) else files
        )
    if "filter" in raw:
        _check_filter(file, raw["filter"])
    _check_encoding(file, raw, type_name, task_type)
    _check_label_map(file, raw, classes)
    if "group_column" in raw and (not task_type.grouped or not LOADERS[raw["loader"]].has_columns):
        grouped = [name for name, other in TASK_TYPES.items() if other.grouped]
        raise fail(
            file,
            "source.group_column",
            f"only for {' and '.join(grouped)} tasks whose loader reads columns; remove it",
        )
    return Source(**raw)
