"""The checks every part of a task or suite YAML shares: reading it, its keys, a choice, a list of strings.

Each raises TaskError naming the file, the dotted key, what is wrong and what is allowed.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import yaml

from bmca_clip.errors import TaskError


def fail(file: Path, key: str, problem: str) -> TaskError:
    return TaskError(f"{file}: key '{key}': {problem}")


def read_yaml(file: Path) -> dict:
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise TaskError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TaskError(f"{file}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    return raw


def check_keys(file: Path, raw: dict, schema: type, prefix: str = "", required: tuple[str, ...] = ()) -> None:
    allowed = [f.name for f in fields(schema) if f.name != "yaml_path"]
    for key in raw:
        if key not in allowed:
            raise fail(file, prefix + str(key), f"unknown key; allowed keys: {', '.join(allowed)}")
    for key in required:
        if raw.get(key) in (None, ""):
            raise fail(file, prefix + key, "required but missing or empty")


def check_choice(file: Path, key: str, value, allowed) -> None:
    if value not in allowed:
        raise fail(file, key, f"unknown value '{value}'; allowed: {', '.join(allowed)}")


def string_list(file: Path, key: str, value) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise fail(file, key, f"expected a non-empty list of non-empty strings, got {value!r}")
    return tuple(value)
