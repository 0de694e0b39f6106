"""Resuming with changed settings: applied ones take effect and are recorded, the rest are refused."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from bmca_clip.checkpoint import list_checkpoints, load_checkpoint
from bmca_clip.config import ConfigError, PretrainConfig, to_object
from bmca_clip.train import run as train_mod
from bmca_clip.train.resume import ResumePlan, plan_resume, resumed_schedule
from tests.helpers.config import compose_config, tiny_train_overrides

LR = 5e-4  # conf/optim/adamw.yaml
WARMUP = 2  # tiny_train_overrides


def _run(corpus, out_dir, **extra):
    cfg = to_object(
        compose_config("pretrain", tiny_train_overrides(corpus, out_dir, **extra)), PretrainConfig
    )
    train_mod.run(cfg)


@pytest.fixture(scope="module")
def stopped_at_3(corpus, tmp_path_factory):
    """A 6-step run that stopped after its step-3 checkpoint (the step-6 one removed)."""
    out = tmp_path_factory.mktemp("base")
    _run(corpus, out)
    (out / "checkpoints" / "step_00000006.pt").unlink()
    return out


@pytest.fixture
def run_dir(stopped_at_3, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_at_3, out)
    return out


def _logged(out) -> dict[int, dict]:
    """The last line logged for each step (a resumed run logs steps 4.. again)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (total - WARMUP)))


def test_resumed_with_a_new_lr_the_optimizer_and_the_logged_lr_follow_it(corpus, run_dir, caplog):
    caplog.set_level(logging.INFO, logger="bmca_clip")
    _run(
        corpus, run_dir, resume="latest", **{"optim.lr": 1e-6, "optim.beta2": 0.95, "optim.weight_decay": 0.1}
    )
    state = load_checkpoint(run_dir / "checkpoints" / "step_00000006.pt")
    decayed, plain = state["optimizer"]["param_groups"]
    assert decayed["initial_lr"] == plain["initial_lr"] == 1e-6
    assert decayed["betas"] == plain["betas"] == (0.9, 0.95)
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.1, 0.0)
    logged = _logged(run_dir)
    for step in (4, 5, 6):  # logged step s ran at 0-based schedule position s - 1
        assert logged[step]["lr"] == pytest.approx(1e-6 * _cosine(step - 1, 6), rel=1e-9), step
    assert "resume: optim.lr 0.0005 -> 1e-06 applied" in caplog.text


def test_extending_train_steps_continues_the_cosine_from_the_current_lr(corpus, run_dir):
    before = _logged(run_dir)
    _run(corpus, run_dir, resume="latest", **{"train.steps": 10})
    logged = _logged(run_dir)
    assert max(logged) == 10 and load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])["step"] == 10
    # The factor in force at the resume (0-based position 3 of the 6-step schedule), then a cosine
    # half-wave from there to lr_min=0 at the new end: no jump at the resume.
    start = _cosine(3, 6)
    for step in range(4, 11):
        expected = LR * start * 0.5 * (1 + math.cos(math.pi * (step - 1 - 3) / (10 - 3)))
        assert logged[step]["lr"] == pytest.approx(expected, rel=1e-9), step
    assert logged[4]["lr"] == pytest.approx(before[4]["lr"], rel=1e-12)  # what the 6-step run used there
    assert all(logged[s]["lr"] > logged[s + 1]["lr"] > 0 for s in range(4, 10))


@pytest.mark.parametrize("key, value", [("train.seed", 1), ("train.batch_size", 8)])
def test_a_changed_data_stream_is_refused_unless_resume_data_is_reset(corpus, run_dir, key, value, caplog):
    old = {"train.seed": 0, "train.batch_size": 16}[key]
    with pytest.raises(ConfigError) as err:
        _run(corpus, run_dir, resume="latest", **{key: value})
    assert f"{key} {old} -> {value}" in str(err.value) and "resume_data=reset" in str(err.value)
    assert not (run_dir / "checkpoints" / "step_00000006.pt").exists()

    caplog.set_level(logging.INFO, logger="bmca_clip")
    _run(corpus, run_dir, resume="latest", resume_data="reset", **{key: value})
    state = load_checkpoint(run_dir / "checkpoints" / "step_00000006.pt")
    assert state["step"] == 6 and "resume_data=reset" in caplog.text
    assert f"resume: {key} {old} -> {value} applied" in caplog.text
    # The fresh stream started at the resume: each worker stream took 3 batches since then, not 6.
    taken = sum(p["sample"] for p in state["data"]["ranks"][0]["positions"].values())
    assert taken == 3 * value if key == "train.batch_size" else taken == 3 * 16


def test_an_architecture_change_is_refused_even_with_resume_data_reset(corpus, run_dir):
    for extra in ({}, {"resume_data": "reset"}):
        with pytest.raises(ConfigError) as err:
            _run(corpus, run_dir, resume="latest", **{"model.force_image_size": 64}, **extra)
        assert "model.force_image_size None -> 64" in str(err.value) and "new run" in str(err.value)


def test_config_history_has_one_entry_per_start_and_config_yaml_is_what_runs_now(corpus, run_dir):
    _run(corpus, run_dir, resume="latest", **{"optim.lr": 1e-4, "train.steps": 8})
    state = load_checkpoint(run_dir / "checkpoints" / "step_00000008.pt")
    history = state["config_history"]
    assert [h["step"] for h in history] == [0, 3]
    assert history[0]["changed"] == {} and history[0]["config"]["optim"]["lr"] == LR
    assert history[1]["changed"] == {"optim.lr": [LR, 1e-4], "train.steps": [6, 8]}
    assert state["config"]["optim"]["lr"] == 1e-4 == history[1]["config"]["optim"]["lr"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 1e-4
    on_disk = yaml.safe_load((run_dir / "config_history.yaml").read_text())
    assert [h["step"] for h in on_disk] == [0, 3] and on_disk[1]["changed"]["train.steps"] == [6, 8]

    (run_dir / "checkpoints" / "step_00000008.pt").unlink()  # a crash after step 6: a plain restart
    _run(corpus, run_dir, resume="latest", **{"optim.lr": 1e-4, "train.steps": 8})
    history = load_checkpoint(run_dir / "checkpoints" / "step_00000008.pt")["config_history"]
    assert [h["step"] for h in history] == [0, 3, 6] and history[2]["changed"] == {}


def test_resume_without_changes_still_reproduces_the_uninterrupted_run(corpus, stopped_at_3, tmp_path):
    straight = tmp_path / "straight"
    _run(corpus, straight)
    resumed = tmp_path / "resumed"
    shutil.copytree(stopped_at_3, resumed)
    _run(corpus, resumed, resume="latest")
    a = load_checkpoint(straight / "checkpoints" / "step_00000006.pt")
    b = load_checkpoint(resumed / "checkpoints" / "step_00000006.pt")
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def _resolved(**overrides) -> dict:
    values = {"model": "bmca-tiny", "data": "local", "data.train_shards": "/data/shards", **overrides}
    cfg = to_object(compose_config("pretrain", [f"{k}={v}" for k, v in values.items()]), PretrainConfig)
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _plan(old: dict, new: dict, world: int = 1):
    return plan_resume(old, new, step=3, old_world=1, world=world)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"optim.warmup_steps": 10}, "optim.warmup_steps 100 -> 10"),
        ({"train.precision": "pure_bf16"}, "train.precision fp32 -> pure_bf16"),
        ({"model.freeze": "[logit_scale]"}, "model.freeze [] -> ['logit_scale']"),
        ({"loss": "siglip"}, "loss.name clip -> siglip"),
    ],
)
def test_what_a_resume_can_never_change_is_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        _plan(_resolved(), _resolved(resume_data="reset", **override))
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


def test_transport_settings_apply_and_stream_settings_need_a_reset():
    plan = _plan(_resolved(), _resolved(**{"data.retries": 9, "train.precision": "amp_bf16"}))
    assert plan.changed == {"data.retries": [5, 9], "train.precision": ["fp32", "amp_bf16"]}
    assert not plan.reset_data
    for new, world in (
        ({"data.train_shards": "/other"}, 1),
        ({}, 2),
        ({"data.filter.min_caption_chars": 5}, 1),
    ):
        with pytest.raises(ConfigError, match="resume_data=reset"):
            _plan(_resolved(), _resolved(**new), world)
        assert _plan(_resolved(), _resolved(resume_data="reset", **new), world).reset_data


def test_a_requeued_job_with_resume_data_reset_does_not_reset_again():
    """The command line of a requeued job still says reset: the checkpoint written after that reset, with
    the same data settings, holds the fresh stream's position, which continues exactly."""
    before = _resolved()
    after_reset = _resolved(resume_data="reset", **{"train.seed": 1})
    assert _plan(before, after_reset).reset_data
    assert not _plan(after_reset, after_reset).reset_data
    assert _plan(after_reset, _resolved(resume_data="reset", **{"train.seed": 2})).reset_data


def test_extending_a_schedule_that_already_reached_lr_0_is_refused():
    cfg = to_object(compose_config("pretrain", ["optim.warmup_steps=2", "train.steps=10"]), PretrainConfig)
    state = {"step": 6, "optimizer": {"param_groups": [{"lr": 0.0, "initial_lr": LR}]}}
    plan = ResumePlan({"train.steps": [6, 10]})
    with pytest.raises(ConfigError, match="decayed to lr 0 at step 6.*optim.lr_min > 0"):
        resumed_schedule(state, plan, cfg)
    state["optimizer"]["param_groups"][0]["lr"] = LR / 4
    assert resumed_schedule(state, plan, cfg) == (6, 0.25)
    assert resumed_schedule(state, ResumePlan({"optim.lr": [LR, 1e-4]}), cfg) is None  # nothing re-planned


def test_a_refused_resume_leaves_config_yaml_and_the_history_alone(corpus, tmp_path):
    """The lr-0 refusal comes from the schedule, checked before the run folder's files are rewritten."""
    out = tmp_path / "finished"
    _run(corpus, out)  # 6 steps: the cosine ends at lr 0
    files = {name: (out / name).read_text() for name in ("config.yaml", "config_history.yaml")}
    with pytest.raises(ConfigError, match="decayed to lr 0"):
        _run(corpus, out, resume="latest", **{"train.steps": 10})
    assert {name: (out / name).read_text() for name in files} == files
