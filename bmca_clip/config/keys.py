"""Which dotted keys a schema has: the check behind "optim.lrr is not a key of optim; did you mean optim.lr?".

Used before Hydra runs (bmca_clip/cli_args.py) on each override and on each group file a command line
composes, so a misspelt key ends in one line naming the closest valid keys instead of Hydra's message.
A schema may name keys that belong elsewhere in a `KEY_HINTS` class attribute ({dotted key: where it
belongs}); the message then says so (train.py's schema sends model.wise_ft_alpha to eval.py).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from bmca_clip.config.checks import did_you_mean
from bmca_clip.errors import ArgvError


def unwrap(hint):
    """X from X | None (Optional[X]); hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return hint


def _map_value(hint):
    """The value type of a dict[str, X] field (X unwrapped), or None when hint is no dict."""
    if typing.get_origin(hint) is not dict:
        return None
    args = typing.get_args(hint)
    return unwrap(args[1]) if args else Any


def check_key(key: str, schema: type, root: type | None = None) -> None:
    """ArgvError, one line, if the dotted key names no field of schema (below a dict field, the entry
    names are the user's: the check goes on with the entry's type). root: the schema whose KEY_HINTS
    apply (default: schema itself)."""
    node, parts, i = schema, key.split("."), 0
    while i < len(parts):
        if not dataclasses.is_dataclass(node):
            return  # Any, a list, a scalar: nothing more to check here
        names = [f.name for f in dataclasses.fields(node)]
        if parts[i] not in names:
            raise ArgvError(unknown_key_message(parts[: i + 1], names, root or schema))
        node = unwrap(typing.get_type_hints(node)[parts[i]])
        i += 1
        if (value := _map_value(node)) is not None:  # a map's keys are names the user chooses
            node, i = value, i + 1


def unknown_key_message(parts: list[str], names: list[str], root: type) -> str:
    """'<key> is not a key of <parent>; <where it belongs, or the closest keys> (keys: ...)'."""
    key, parent = ".".join(parts), ".".join(parts[:-1])
    where = parent or "the config"
    if elsewhere := getattr(root, "KEY_HINTS", {}).get(key):
        return f"{key} is not a key of {where}: it is {elsewhere}"
    hint = did_you_mean(parts[-1], names, f"{parent}." if parent else "")
    return f"{key} is not a key of {where}; {hint}(keys: {', '.join(names)})"


def node_at(schema: type, package: str):
    """The type at a dotted package path of schema ('' = schema itself); Any where it cannot be told."""
    node: Any = schema
    for part in [p for p in package.split(".") if p]:
        if (value := _map_value(node)) is not None:
            node = value
        elif dataclasses.is_dataclass(node) and part in {f.name for f in dataclasses.fields(node)}:
            node = unwrap(typing.get_type_hints(node)[part])
        else:
            return Any
    return node


def check_mapping(content: dict, schema: type, package: str, where: str, root: type) -> None:
    """ArgvError '<where>: <key> is not a key of ...' for the first key of content (a group file's, to be
    merged at package) that the schema node there lacks; nested mappings are checked too."""
    node = node_at(schema, package)
    if not dataclasses.is_dataclass(node):
        return
    hints, names = typing.get_type_hints(node), [f.name for f in dataclasses.fields(node)]
    prefix = f"{package}." if package else ""
    for key, value in content.items():
        if key == "hydra" and not package:  # a global group file may set Hydra's own keys
            continue
        if key not in names:
            message = unknown_key_message([*prefix.split(".")[:-1], str(key)], names, root)
            raise ArgvError(f"{where}: {message}")
        if isinstance(value, dict):
            inner = unwrap(hints[key])
            if (entry := _map_value(inner)) is not None and dataclasses.is_dataclass(entry):
                for name, sub in value.items():
                    if isinstance(sub, dict):
                        check_mapping(sub, schema, f"{prefix}{key}.{name}", where, root)
            elif dataclasses.is_dataclass(inner):
                check_mapping(value, schema, f"{prefix}{key}", where, root)
