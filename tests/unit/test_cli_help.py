"""`--help` of every entry point: its own config groups, every key with its description and value, exit 0.

The descriptions are the comments on the schema's dataclass fields, so this test also fails when a field
is added without one.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys

import pytest

from bmca_clip.cli_help import field_comments, schema_keys
from bmca_clip.config import EvaluateConfig, PretrainConfig, TrainConfig
from bmca_clip.data.filters import FilterConfig
from tests.helpers.config import REPO


def _help(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def train_help() -> str:
    proc = _help("train.py", "--help")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def eval_help() -> str:
    proc = _help("eval.py", "--help")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _groups(text: str) -> dict[str, str]:
    """Group name -> its options line, from the 'Config groups' block."""
    block = text.split("Config groups", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    return {line.split()[0]: line for line in block}


def _key_line(text: str, key: str) -> str:
    """The key's line (or two lines, when key=value is long) of the help."""
    lines = text.splitlines()
    i = next((i for i, line in enumerate(lines) if line.startswith(f"  {key}=")), None)
    assert i is not None, f"{key} is not listed"
    wrapped = i + 1 < len(lines) and lines[i + 1].startswith(" " * 20)  # the description below it
    return " ".join(lines[i : i + 2]) if wrapped else lines[i]


def _every_field(schema: type) -> list[tuple[type, str]]:
    """(dataclass, field) of every schema dataclass reachable from `schema`, found without cli_help."""
    out, todo, seen = [], [schema], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        hints = __import__("typing").get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.append((cls, f.name))
            hint = hints[f.name]
            for t in (hint, *getattr(hint, "__args__", ())):
                if dataclasses.is_dataclass(t):
                    todo.append(t)
    return out


@pytest.mark.parametrize("schema", [PretrainConfig, EvaluateConfig])
def test_every_schema_field_has_a_comment(schema):
    missing = [
        f"{cls.__name__}.{name}" for cls, name in _every_field(schema) if not field_comments(cls)[name]
    ]
    assert not missing, f"fields without a comment (their --help line would be empty): {missing}"


def test_comments_come_from_the_source_above_beside_and_inside_a_field():
    train = field_comments(TrainConfig)
    assert train["batch_size"].startswith("micro-batch per device")  # beside
    assert train["pure_bf16_max_stalled"].startswith("pure_bf16 refuses to start")  # the lines above
    assert "1.0 = never refuse" in train["pure_bf16_max_stalled"]
    assert field_comments(FilterConfig)["licences"] == "article_license values to keep"  # another module


def test_train_help_lists_its_groups_and_every_key_with_its_description(train_help):
    groups = _groups(train_help)
    assert set(groups) == {"model", "data", "optim", "loss", "train", "logger", "experiment"}
    assert "bmca-tiny*" in groups["model"] and "bmca_clip_8gpu" in groups["experiment"]
    assert "hydra/" not in train_help and "suite" not in groups
    for key in schema_keys(PretrainConfig):
        if key.group and not key.is_map:
            assert f"\n{key.name}: {key.description}\n" in train_help
        else:
            assert key.description in _key_line(train_help, key.name), key.name
    assert "  train.batch_size=256 " in train_help and "micro-batch per device" in train_help
    assert "  checkpoint.every_steps=1000 " in train_help and "  resume=null " in train_help
    assert "  output_dir=runs/${name} " in train_help  # Hydra's template did not eat the interpolation


def test_every_field_reachable_from_the_schemas_is_in_the_help(train_help, eval_help):
    """Independently of cli_help's walk: each field's name appears as a key, with its comment."""
    for schema, text in ((PretrainConfig, train_help), (EvaluateConfig, eval_help)):
        for cls, name in _every_field(schema):
            keys = [line.strip().split("=")[0].split(": ")[0] for line in text.splitlines()]
            lines = [k for k in keys if k == name or k.endswith(f".{name}")]
            assert lines, f"{cls.__name__}.{name} is not in the help of {schema.__name__}"
            assert field_comments(cls)[name].split(";")[0][:40] in text, f"{cls.__name__}.{name}"


def test_help_shows_the_values_this_command_line_composes():
    proc = _help("train.py", "experiment=demo", "train.steps=7", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "  train.steps=7 " in proc.stdout and "  model.name=bmca-small " in proc.stdout
    assert "demo*" in _groups(proc.stdout)["experiment"]


def test_eval_help_lists_its_own_groups_and_keys(eval_help):
    groups = _groups(eval_help)
    assert set(groups) == {"model", "suite"}
    assert "demo*" in groups["suite"] and "hydra/" not in eval_help
    for key in ("suite", "checkpoint", "data_root", "shard", "cache_dir", "rerun", "model.pretrained"):
        assert _key_line(eval_help, key)
    assert "  suite=demo " in eval_help
    assert "score the i-th of n shares" in _key_line(eval_help, "shard")


def test_hydra_help_stays_hydras_own():
    proc = _help("train.py", "--hydra-help")
    assert proc.returncode == 0, proc.stderr
    assert "hydra/launcher" in proc.stdout and "--cfg" in proc.stdout


def _main_help(module: str, flag: str, capsys) -> str:
    """`python -m <module> <flag>`, run in this process (each module's main takes argv)."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stop:
        main([flag])
    assert stop.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "module, flag, keys",
    [
        (
            "bmca_clip.export",
            "--help",
            {"checkpoint": "newest checkpoint", "results": "eval", "license": "SPDX"},
        ),
        (
            "bmca_clip.wise_ft",
            "-h",
            {"base": "start weights", "alpha": "(1 - alpha) * base", "any_base": "true:"},
        ),
    ],
)
def test_key_value_module_clis_answer_help(module, flag, keys, capsys):
    text = _main_help(module, flag, capsys)
    assert text.startswith(f"usage: python -m {module} ")
    for key, words in keys.items():
        line = next(x for x in text.splitlines() if x.strip().startswith(f"{key}="))
        assert words in line, line


@pytest.mark.parametrize("module", ["bmca_clip.eval.merge", "bmca_clip.data.synthetic"])
def test_argparse_module_clis_describe_every_option(module, capsys):
    text = _main_help(module, "--help", capsys)
    assert text.startswith(f"usage: python -m {module} ")
    lines = text.split("options:", 1)[1].splitlines()
    for i, line in enumerate(lines):
        if not line.strip().startswith("--"):
            continue
        # argparse puts the description after two spaces, or alone on the next line when the flag is long
        beside = re.search(r"\S\s{2,}\S", line.strip())
        below = (
            i + 1 < len(lines) and lines[i + 1].startswith(" " * 10) and not lines[i + 1].strip()[:1] == "-"
        )
        assert beside or below, f"{module}: {line.strip()} has no description"
