"""`python train.py --help` and `python eval.py --help`: this entry point's config groups and every key.

Each key is listed with the value this command line composes (so `experiment=demo --help` shows the
demo's values) and its one-line description: the comment on its dataclass field in bmca_clip/config/
(and data/filters.py), read from the source with ast and tokenize when --help runs, so the help cannot
drift from the schema. A field without a comment is a bug (tests/unit/test_cli_help.py).

Hydra prints this text as its `hydra.help.template`, which conf/pretrain.yaml and conf/evaluate.yaml set
to `${bmca_help:<schema>}`, this module's resolver (registered by config.register_configs). Why a template
and not our own look at sys.argv before Hydra: when Hydra renders it, the config is composed with the
user's overrides, from Hydra's own search path (a packaged conf/, user configs added to it), and its choices
are known; `--hydra-help` stays Hydra's, and the entry points need no extra line.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import sys
import tokenize
import typing
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

PROGRAMS = {  # resolver argument -> (schema name in bmca_clip.config, command, example)
    "pretrain": ("PretrainConfig", "python train.py", "python train.py experiment=demo train.steps=50"),
    "evaluate": ("EvaluateConfig", "python eval.py", "python eval.py suite=demo checkpoint=runs/demo"),
}
KEY_WIDTH = 44  # key=value column; longer ones put their description on the next line
# Schema name -> dataclass, handed over by config.register_configs: importing config here would close a cycle.
_SCHEMAS: dict[str, type] = {}
# Groups whose option is named on the command line as `key=<option>` and whose keys follow in --help (a
# train.py model=... is listed under Config groups only, as before)
_CHOSEN_BY_NAME = ("suite",)


@dataclasses.dataclass
class Key:
    name: str  # dotted key, `<name>` standing for a map's entries (data.sources.<name>.weight)
    description: str
    field: dataclasses.Field
    in_map: bool = False  # a field of a map's value type: its value is the schema default
    group: bool = False  # the field holds a dataclass, or a map of them: its keys follow
    is_map: bool = False  # the field is a map name -> dataclass (data.sources)


@functools.cache
def _comments_by_line(path: str) -> dict[int, str]:
    text = Path(path).read_text(encoding="utf-8")
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}


@functools.cache
def _module_tree(path: str) -> ast.Module:
    return ast.parse(Path(path).read_text(encoding="utf-8"))


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment: the comment lines right above the field, then those on its own lines.
    Inherited fields (eval.py's model extends ModelConfig) keep the comment of the class declaring them."""
    out = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            out.update(_own_field_comments(base))
    return out


def _own_field_comments(cls: type) -> dict[str, str]:
    path = inspect.getsourcefile(cls)
    comments, lines = _comments_by_line(path), Path(path).read_text(encoding="utf-8").splitlines()
    node = next(n for n in _module_tree(path).body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    out = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above, line = [], stmt.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        own = [comments[i] for i in range(stmt.lineno, stmt.end_lineno + 1) if i in comments]
        out[stmt.target.id] = " ".join(above + own)
    return out


def _dataclass_in(hint: Any) -> tuple[type | None, bool]:
    """(the dataclass a field holds, whether it is the value type of a dict) or (None, False)."""
    if dataclasses.is_dataclass(hint):
        return hint, False
    if typing.get_origin(hint) is dict:
        value = typing.get_args(hint)[1]
        if dataclasses.is_dataclass(value):
            return value, True
    return None, False


def schema_keys(schema: type, prefix: str = "", in_map: bool = False) -> list[Key]:
    """Every key of `schema` and of the dataclasses it holds, depth first, with its description."""
    hints, comments = typing.get_type_hints(schema), field_comments(schema)
    plain, nested = [], []
    for f in dataclasses.fields(schema):
        inner, is_map = _dataclass_in(hints[f.name])
        name = prefix + f.name
        key = Key(name, comments.get(f.name, ""), f, in_map, inner is not None, is_map)
        if inner is None:
            plain.append(key)
        else:  # after the plain keys, so that these do not read as the keys of the group above them
            nested += [
                key,
                *schema_keys(inner, f"{name}.<name>." if is_map else f"{name}.", in_map or is_map),
            ]
    return plain + nested


def _format(value: Any) -> str:
    if isinstance(value, str):
        text = value if value else "''"
    else:
        text = json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= 60 else text[:57] + "..."


def _value(key: Key, composed: dict) -> str:
    if key.in_map:  # one entry of a map: the schema's default
        f = key.field
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        return _format(default)
    node: Any = composed
    for part in key.name.split("."):
        if not isinstance(node, dict) or part not in node:
            return "???"
        node = node[part]
    if key.is_map and isinstance(node, dict):  # its entries' names; their keys are listed below
        return "{" + ", ".join(node) + "}"
    return _format(node)


def _group_lines(choices: dict) -> list[str]:
    """One line per config group of this entry point: its options, the chosen one starred."""
    try:
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
    except Exception:  # not inside a Hydra run: the choices alone
        loader = None
    lines = []
    for group, chosen in sorted(choices.items()):
        if group == "hydra" or group.startswith("hydra/"):
            continue
        options = sorted(loader.get_group_options(group)) if loader is not None else [str(chosen)]
        listed = ", ".join(f"{o}*" if o == chosen else o for o in options)
        optional = "   (optional; none chosen)" if chosen is None else ""
        lines.append(f"  {group:<12} {listed}{optional}")
    return lines


def render(program: str, composed: dict, choices: dict) -> str:
    """The help text of `program` (a PROGRAMS key); composed: the config as this command line composes it
    (unresolved), choices: Hydra's group -> chosen option."""
    schema_name, command, example = PROGRAMS[program]
    invoked = Path(sys.argv[0]).name
    if invoked.startswith(
        "bmca-"
    ):  # the console script (bmca-train, bmca-eval) rather than the checkout's file
        example = example.replace(command, invoked)
        command = invoked
    lines = [
        f"usage: {command} [group=option ...] [key=value ...]",
        f"  e.g. {example}",
        f"  {command} --hydra-help   Hydra's own flags and groups: --cfg job, -m (multirun), launchers",
        "",
        "Config groups (group=option; * = chosen by this command line):",
        *_group_lines(choices),
        "",
        "Keys (key=value; the value shown is what this command line composes):",
    ]
    for key in schema_keys(_SCHEMAS[schema_name]):
        chosen = choices.get(key.name)  # a key that is a Hydra group itself (model, suite): its option
        if key.group and not key.is_map:  # its keys follow; eval's suite=<name> is set on the command line
            lines += ["", f"{key.name}: {key.description}"]
            if chosen is not None and key.name in _CHOSEN_BY_NAME:
                pair = f"{key.name}={chosen}"
                lines.append(f"  {pair:<{KEY_WIDTH}}the option chosen ({key.name}/{chosen}.yaml)")
            continue
        pair = f"{key.name}={chosen if chosen is not None else _value(key, composed)}"
        if len(pair) < KEY_WIDTH:
            lines.append(f"  {pair:<{KEY_WIDTH}}{key.description}")
        else:
            lines += [f"  {pair}", f"  {'':<{KEY_WIDTH}}{key.description}"]
    return "\n".join(lines) + "\n"


def help_resolver(program: str, *, _root_) -> str:
    """`${bmca_help:<program>}` in hydra.help.template: the help text, `$` escaped for Hydra's
    string.Template (output_dir's default is `runs/${name}`)."""
    composed = OmegaConf.to_container(_root_, resolve=False)
    composed.pop("hydra", None)
    choices = OmegaConf.to_container(_root_.hydra.runtime.choices) if "hydra" in _root_ else {}
    return render(program, composed, choices).replace("$", "$$")


def register_help_resolver(schemas: dict[str, type]) -> None:
    """Register `${bmca_help:...}`; schemas: PROGRAMS' schema names -> their dataclasses."""
    _SCHEMAS.update(schemas)
    OmegaConf.register_new_resolver("bmca_help", help_resolver, replace=True)
