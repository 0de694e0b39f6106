"""Every preset composes; a misspelled key or a bad value fails early, naming the key and the choices."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from bmca_clip.config import ConfigError, EvaluateConfig, PretrainConfig, to_object
from tests.helpers.config import CONF, REPO, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = to_object(compose_config("pretrain", [f"experiment={experiment}"]), PretrainConfig)
    assert isinstance(cfg, PretrainConfig)
    assert cfg.train.steps >= 1


@pytest.mark.parametrize("model", MODELS)
def test_every_model_preset_composes(model):
    cfg = to_object(compose_config("pretrain", [f"model={model}"]), PretrainConfig)
    assert cfg.model.name


def test_defaults_compose_for_both_entry_points():
    train_cfg = to_object(compose_config("pretrain"), PretrainConfig)
    assert train_cfg.output_dir == "runs/default"
    eval_cfg = to_object(compose_config("evaluate"), EvaluateConfig)
    assert eval_cfg.suite.name == "demo"
    assert eval_cfg.checkpoints == [None]


def test_demo_experiment_is_a_delta_on_the_defaults():
    cfg = to_object(compose_config("pretrain", ["experiment=demo"]), PretrainConfig)
    assert cfg.name == "demo" and cfg.model.name == "bmca-small" and cfg.output_dir == "runs/demo"
    assert cfg.optim.schedule == "cosine"  # untouched default survives the preset


def test_misspelled_key_fails_at_compose_time_naming_it():
    with pytest.raises((ConfigCompositionException, ConfigAttributeError, ConfigKeyError)) as err:
        compose_config("pretrain", ["optim.lrr=0.1"])
    assert "lrr" in str(err.value)


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("train.precision=fp64", "train.precision", "amp_bf16"),
        ("optim.schedule=linear", "optim.schedule", "cosine"),
        ("logger.wandb.mode=online-ish", "logger.wandb.mode", "offline"),
        ("train.accum_freq=0", "train.accum_freq", ">= 1"),
    ],
)
def test_bad_value_names_the_key_and_the_allowed_values(override, key, allowed):
    with pytest.raises(ConfigError) as err:
        to_object(compose_config("pretrain", [override]), PretrainConfig)
    assert key in str(err.value) and allowed in str(err.value)


def test_wrong_type_is_rejected_with_the_key():
    with pytest.raises((ValidationError, ConfigCompositionException)) as err:
        to_object(compose_config("pretrain", ["train.steps=many"]), PretrainConfig)
    assert "steps" in str(err.value)


def _run_train(*args):
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_bad_value_exits_with_one_clear_line():
    proc = _run_train("train.precision=fp64", "output_dir=/tmp/bmca-never-written")
    assert proc.returncode == 2
    assert (
        "error: train.precision='fp64' is not allowed; choose one of: fp32, amp_bf16, amp_fp16" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_cli_misspelled_key_names_it():
    proc = _run_train("optim.lrr=0.1")
    assert proc.returncode != 0
    assert "lrr" in proc.stderr and "Traceback" not in proc.stderr


def test_bmca_clip_recipe_keeps_the_8192_contrastive_batch_on_1_4_and_8_gpus():
    for experiment, gpus in (("bmca_clip_1gpu", 1), ("bmca_clip", 4), ("bmca_clip_8gpu", 8)):
        cfg = to_object(compose_config("pretrain", [f"experiment={experiment}"]), PretrainConfig)
        # accum_freq is derived from train.global_batch and the world size (tests/unit/test_global_batch.py)
        assert cfg.train.batch_size * cfg.train.accumulation(gpus) * gpus == 8192, experiment
        assert cfg.model.name == "ViT-L-14" and cfg.model.pretrained == "commonpool_xl_clip_s13b_b90k"
        assert (cfg.optim.lr, cfg.optim.beta2, cfg.optim.warmup_steps) == (1e-6, 0.95, 1000)
        assert cfg.data.filter.include_primary  # concept-filtered by default
        assert cfg.name == experiment
