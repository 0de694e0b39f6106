"""A misspelt key in a group file the command line composes (a private suite, model or experiment on
hydra.searchpath) or in an added override (`+suite.x=1`) ends with one `error:` line and exit status 2,
naming the file or the override, the key and the closest valid key (bmca_clip/cli_args.py,
config/keys.py). Before: Hydra's multi-line message and exit status 1 for the file, silence for `+key`
(OmegaConf drops an added key it has no field for); train.py ignored eval.py's model.wise_ft_alpha."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bmca_clip.cli_args import prepare_argv
from bmca_clip.config import EvaluateConfig, PretrainConfig
from tests.helpers.config import REPO


def _private(root: Path) -> Path:
    """A folder laid out like conf/, its files each with one misspelt key."""
    (root / "suite").mkdir(parents=True)
    (root / "suite/mine.yaml").write_text(yaml.safe_dump({"name": "mine", "taks": ["synthetic_color"]}))
    (root / "model").mkdir()
    (root / "model/mine.yaml").write_text(yaml.safe_dump({"name": "bmca-tiny", "pretraind": "x.pt"}))
    (root / "experiment").mkdir()
    experiment = {"name": "mine", "optim": {"lrr": 1e-4}}
    (root / "experiment/mine.yaml").write_text("# @package _global_\n" + yaml.safe_dump(experiment))
    return root


def _refused(argv: list[str], schema: type, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        prepare_argv(list(argv), schema)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.removeprefix("error: ").strip()


@pytest.mark.parametrize(
    ("script", "schema", "choice", "file", "expected"),
    [
        ("eval.py", EvaluateConfig, "suite=mine", "suite/mine.yaml",
         "suite.taks is not a key of suite; did you mean suite.tasks"),
        ("eval.py", EvaluateConfig, "model=mine", "model/mine.yaml",
         "model.pretraind is not a key of model; did you mean model.pretrained?"),
        ("train.py", PretrainConfig, "experiment=mine", "experiment/mine.yaml",
         "optim.lrr is not a key of optim; did you mean optim.lr?"),
    ],
)  # fmt: skip
def test_a_misspelt_key_in_a_private_group_file_names_the_file_the_key_and_the_closest(
    tmp_path, capsys, script, schema, choice, file, expected
):
    mine = _private(tmp_path / "mine")
    err = _refused([script, f"hydra.searchpath=[file://{mine}]", choice], schema, capsys)
    assert err.startswith(f"{mine / file}: {expected}")


def test_every_option_of_a_swept_group_is_checked(tmp_path, capsys):
    mine = _private(tmp_path / "mine")
    err = _refused(
        ["eval.py", "-m", f"hydra.searchpath=[file://{mine}]", "suite=demo,mine"], EvaluateConfig, capsys
    )
    assert err.startswith(f"{mine / 'suite/mine.yaml'}: suite.taks is not a key of suite")


@pytest.mark.parametrize(
    ("script", "schema", "override", "expected"),
    [
        ("eval.py", EvaluateConfig, "+suite.x=1", "+suite.x=1: suite.x is not a key of suite; (keys: name, tasks"),
        ("eval.py", EvaluateConfig, "++suite.tasks_=[pcam]", "++suite.tasks_=[pcam]: suite.tasks_ is not a key of "
         "suite; did you mean suite.tasks"),
        ("train.py", PretrainConfig, "+optim.lrr=1", "+optim.lrr=1: optim.lrr is not a key of optim; did you mean "
         "optim.lr?"),
    ],
)  # fmt: skip
def test_an_added_key_the_schema_lacks_is_refused(capsys, script, schema, override, expected):
    assert _refused([script, override], schema, capsys).startswith(expected)


def test_added_keys_the_schema_has_pass(tmp_path):
    argv = ["eval.py", "+suite.tasks=[synthetic_color]", "+model.wise_ft_alpha=0.5", "+data_root=/x"]
    assert prepare_argv(list(argv), EvaluateConfig) == argv
    argv = ["train.py", "+data.sources.mine.shards=/x", "+data.balance.weights.microscopy=3"]
    assert prepare_argv(list(argv), PretrainConfig) == argv


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train.py", "model.wise_ft_alpha=0.5", "--cfg", "job"],
         "error: model.wise_ft_alpha is not a key of model: it is an eval.py key"),
        (["eval.py", "+suite.x=1", "--cfg", "job"], "error: +suite.x=1: suite.x is not a key of suite;"),
        (["eval.py", "checkpoint=5", "device=cpu"], "error: checkpoint=5 is invalid: expected a checkpoint path"),
    ],
)  # fmt: skip
def test_the_entry_points_refuse_in_one_line(args, expected):
    proc = _cli(*args)
    assert (proc.returncode, proc.stderr.count("\n")) == (2, 1), proc.stderr[-2000:]
    assert proc.stderr.startswith(expected) and "Traceback" not in proc.stderr


def test_eval_py_refuses_a_private_suite_with_a_misspelt_key_in_one_line(tmp_path):
    mine = _private(tmp_path / "mine")
    proc = _cli("eval.py", f"hydra.searchpath=[file://{mine}]", "suite=mine")
    assert (proc.returncode, proc.stderr.count("\n")) == (2, 1), proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {mine / 'suite/mine.yaml'}: suite.taks is not a key of suite")
