"""The command line before Hydra (bmca_clip/cli_args.py): brace patterns and regex lists reach the config
as typed, and a bad override ends with one `error:` line (exit 2) naming what would work."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from bmca_clip import cli_args
from bmca_clip.cli import EXIT_REFUSED
from bmca_clip.cli_args import prepare_argv, rewrite_argv
from bmca_clip.config import EvaluateConfig, PretrainConfig, to_object
from bmca_clip.model import build_model
from tests.helpers.config import REPO, compose_config


@pytest.mark.parametrize(
    "pattern",
    [
        "/data/shards/{000000..000099}.tar",
        "/data/{a,b}/{0..9}.tar::https://host/x/{00..03}.tar",
        "/data/shards/{000..009}.tar?token=${oc.env:HOME}",
    ],
)
def test_brace_pattern_reaches_the_config_as_typed(pattern):
    argv = rewrite_argv(["train.py", "data=local", f"data.train_shards={pattern}"], PretrainConfig)
    cfg = compose_config("pretrain", argv[1:])
    expected = pattern.replace("${oc.env:HOME}", cfg.data.train_shards.rsplit("=", 1)[-1])
    assert cfg.data.train_shards == expected


@pytest.mark.parametrize(
    "arg",
    [
        "data.train_shards='/data/{0..9}.tar'",  # already quoted for Hydra
        "output_dir=${oc.env:HOME}/runs",  # an interpolation, not a brace pattern
        "checkpoint=[runs/a,runs/b]",  # a list Hydra parses
        "+data.sources.mine={shards:/data/x.tar,weight:2}",  # a dict Hydra parses
        "data.train_shards=/data/shards",
    ],
)
def test_values_hydra_already_reads_are_left_alone(arg):
    schema = EvaluateConfig if arg.startswith("checkpoint") else PretrainConfig
    assert rewrite_argv(["x.py", arg], schema) == ["x.py", arg]


def test_a_sweep_of_brace_patterns_stays_a_sweep():
    argv = rewrite_argv(["train.py", "-m", "data.train_shards=/a/{0..9}.tar,/b/{00..19}.tar"], PretrainConfig)
    assert argv[2] == "data.train_shards='/a/{0..9}.tar','/b/{00..19}.tar'"
    override = OverridesParser.create().parse_overrides([argv[2]])[0]
    assert [item.text for item in override.value().list] == ["/a/{0..9}.tar", "/b/{00..19}.tar"]


def test_exit_status_is_the_one_of_every_refusal():
    assert cli_args.EXIT_REFUSED == EXIT_REFUSED


def test_readme_freeze_list_parses_and_freezes_exactly_those_parameters():
    argv = rewrite_argv(["train.py", r"model.freeze=[^visual\.conv1, logit_scale]"], PretrainConfig)
    cfg = compose_config("pretrain", argv[1:])
    assert list(cfg.model.freeze) == ["^visual\\.conv1", "logit_scale"]
    model = build_model(to_object(cfg, PretrainConfig).model).model
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"visual.conv1.weight", "logit_scale"}


def refused(argv, schema, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        prepare_argv(list(argv), schema)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "argv, schema, expected",
    [
        (["train.py", "optim.lrr=1"], PretrainConfig, "optim.lrr is not a key of optim; did you mean optim.lr?"),
        (["eval.py", "batchsize=3"], EvaluateConfig, "batchsize is not a key of the config; did you mean batch_size?"),
        (["train.py", "model=ViT-L14"], PretrainConfig, "model=ViT-L14 is not an option of model; did you mean model=ViT-L-14"),
        (["eval.py", "suite=dermatolgy"], EvaluateConfig, "did you mean suite=dermatology"),
        (["train.py", "experiment=bmca_clip8gpu"], PretrainConfig, "did you mean experiment=bmca_clip_8gpu"),
        (["train.py", "-m", "hydra/launcher=slrum"], PretrainConfig, "did you mean hydra/launcher=slurm"),
        (["train.py", "+data.sources.mine.shards=/x", "data.sources.mine.weigth=2"], PretrainConfig,
         "data.sources.mine.weigth is not a key of data.sources.mine; did you mean data.sources.mine.weight?"),
    ],
)  # fmt: skip
def test_misspelling_names_the_closest_keys_and_all_of_them(argv, schema, expected, capsys):
    err = refused(argv, schema, capsys)
    assert expected in err
    if "optim.lrr" in err:
        assert "(keys: lr, weight_decay, beta1, beta2, eps, warmup_steps, schedule, lr_min" in err


def test_grammar_error_shows_the_quoting_that_works(capsys):
    err = refused(["train.py", "--cfg", "job", "optim.lr=[1"], PretrainConfig, capsys)
    assert "cannot read the override 'optim.lr=[1'" in err
    assert "\"optim.lr='[1'\"" in err


def test_dict_entries_and_flags_pass_the_check():
    argv = [
        "train.py",
        "--cfg",
        "job",
        "data=biomedica",
        "data.sources.commercial.weight=2",
        "+data.balance.weights.microscopy=3",
        "data.sources.other.pattern=/x/{0..1}.tar",
        "hydra.run.dir=/tmp/x",
    ]
    out = rewrite_argv(argv, PretrainConfig)
    assert out[:6] == argv[:6] and out[7] == argv[7]
    assert out[6] == "data.sources.other.pattern='/x/{0..1}.tar'"
    cfg = compose_config("pretrain", out[3:])
    assert cfg.data.balance.weights.microscopy == 3 and cfg.data.sources.other.pattern == "/x/{0..1}.tar"


@pytest.mark.parametrize(
    "script, args, code, expected",
    [
        ("train.py", ["data=local", "data.train_shards=/data/shards/{000000..000099}.tar", "--cfg", "job"], 0,
         "train_shards: /data/shards/{000000..000099}.tar"),
        ("train.py", ["optim.lrr=1"], 2, "error: optim.lrr is not a key of optim; did you mean optim.lr?"),
        ("eval.py", ["model=ViT-L14"], 2, "error: model=ViT-L14 is not an option of model"),
    ],
)  # fmt: skip
def test_entry_points_apply_it(script, args, code, expected):
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == code, proc.stderr
    assert expected in (proc.stdout if code == 0 else proc.stderr)
    if code:
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
