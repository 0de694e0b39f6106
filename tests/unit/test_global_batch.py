"""train.global_batch: the user states the contrastive batch, the accumulation follows from the world size.

The recipe fixes 8192 pairs whatever the GPU count; a world that cannot reach it exactly is refused with the
numbers and the nearest settings that work.
"""

from __future__ import annotations

import json

import pytest
import torch

from bmca_clip.config import ConfigError, PretrainConfig, TrainConfig, to_object
from bmca_clip.train import trainer as trainer_mod
from tests.helpers.config import compose_config, tiny_train_overrides
from tests.helpers.torchrun import torchrun


@pytest.mark.parametrize(
    "world, batch_size, accum",
    [(1, 1024, 8), (2, 1024, 4), (4, 1024, 2), (8, 1024, 1), (16, 512, 1), (4, 512, 4), (32, 256, 1)],
)
def test_accumulation_is_derived_from_the_world_size(world, batch_size, accum):
    train = TrainConfig(global_batch=8192, batch_size=batch_size)
    assert train.accumulation(world) == accum
    assert batch_size * accum * world == 8192


def test_without_global_batch_the_accumulation_is_as_given():
    assert TrainConfig().accumulation(8) == 1
    assert TrainConfig(accum_freq=3).accumulation(8) == 3  # contrastive batch = batch_size x 3 x 8


def test_an_explicit_accum_freq_that_agrees_is_accepted():
    assert TrainConfig(global_batch=8192, batch_size=1024, accum_freq=2).accumulation(4) == 2


@pytest.mark.parametrize(
    "world, batch_size, accum_freq, expected",
    [
        # 1000 x 3 = 3000 does not divide 8192: the nearest global batches and per-device batches named
        (3, 1000, None, r"train\.global_batch=8192 is not a multiple of train\.batch_size=1000 x 3 "),
        (3, 1000, None, r"train\.global_batch=6000 or 9000"),
        (3, 1000, None, r"no train\.batch_size works on 3 processes"),
        # 1024 x 16 = 16384 is already twice the global batch: halve the micro-batch
        (16, 1024, None, r"x 16 processes = 16384.*train\.batch_size=512"),
        # an explicit accumulation that disagrees with the derived one
        (4, 1024, 4, r"train\.accum_freq=4 disagrees with train\.global_batch=8192.*derived: 2"),
    ],
)
def test_what_does_not_divide_is_refused_with_the_numbers(world, batch_size, accum_freq, expected):
    train = TrainConfig(global_batch=8192, batch_size=batch_size, accum_freq=accum_freq)
    with pytest.raises(ConfigError, match=expected) as err:
        train.accumulation(world)
    assert "\n" not in str(err.value)


def test_near_batch_sizes_are_offered_when_the_world_divides():
    with pytest.raises(
        ConfigError, match=r"train\.batch_size=1024 or 2048 .*train\.global_batch=6000 or 12000"
    ):
        TrainConfig(global_batch=8192, batch_size=1500).accumulation(4)


def test_global_batch_must_be_positive():
    with pytest.raises(ConfigError, match=r"train\.global_batch"):
        TrainConfig(global_batch=0)


@pytest.mark.parametrize("experiment", ["bmca_clip", "bmca_clip_1gpu", "bmca_clip_8gpu"])
def test_recipe_presets_state_the_8192_batch(experiment):
    cfg = to_object(compose_config("pretrain", [f"experiment={experiment}"]), PretrainConfig)
    assert cfg.train.global_batch == 8192
    worlds = (1, 2, 4, 8, 16) if experiment == "bmca_clip" else (1, 2, 4, 8)
    for world in worlds:
        assert cfg.train.batch_size * cfg.train.accumulation(world) * world == 8192, (experiment, world)


def test_one_process_trains_on_contrastive_batches_of_global_batch(corpus, tmp_path, monkeypatch, caplog):
    """The loss sees global_batch pairs per step: 8 per micro-batch x 4 accumulated = 32."""
    seen = []
    real = trainer_mod.build_loss

    def recording(cfg, dist):
        loss = real(cfg, dist)

        def call(image_features, text_features, *args, **kwargs):
            seen.append(image_features.shape[0])
            return loss(image_features, text_features, *args, **kwargs)

        return call

    monkeypatch.setattr(trainer_mod, "build_loss", recording)
    overrides = tiny_train_overrides(
        corpus, tmp_path / "run", **{"train.global_batch": 32, "train.batch_size": 8, "train.steps": 2}
    )
    from bmca_clip.train import run as train_mod

    with caplog.at_level("INFO", logger="bmca_clip"):
        train_mod.run(to_object(compose_config("pretrain", overrides), PretrainConfig))
    assert seen and set(seen) == {32}
    assert len(seen) == 2 * 4  # one loss per micro-batch, each over the whole cached batch
    assert "contrastive batch 32 = train.batch_size 8 x accumulation 4 x 1 processes" in caplog.text
    recorded = (tmp_path / "run" / "config.yaml").read_text()
    assert "accum_freq: 4" in recorded and "global_batch: 32" in recorded


def test_two_ranks_derive_their_accumulation_and_train_the_global_batch(corpus, tmp_path):
    overrides = tiny_train_overrides(
        corpus,
        tmp_path / "run",
        **{"train.global_batch": 64, "train.batch_size": 16, "train.steps": 2, "checkpoint.every_steps": 2},
    )
    proc = torchrun("train.py", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "contrastive batch 64 = train.batch_size 16 x accumulation 2 x 2 processes" in proc.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert state["samples_seen"] == 2 * 64
    for rank in state["data"]["ranks"]:  # each rank read 2 steps x 2 micro-batches of 16
        assert rank["positions"]["0"]["sample"] == 2 * 2 * 16
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["samples_seen"] == 2 * 64


def test_a_resume_on_another_world_size_is_still_judged_a_data_stream_change():
    """The recorded config holds the derived accumulation: a resume on twice the processes keeps the
    global batch (accumulation 4 -> 2, applied), but each rank's stream changes, so it needs
    resume_data=reset."""
    from dataclasses import replace

    from omegaconf import OmegaConf

    from bmca_clip.train.resume import plan_resume

    def resolved(world: int, reset: bool = False) -> dict:
        cfg = PretrainConfig(train=TrainConfig(global_batch=32, batch_size=8))
        cfg = replace(cfg, train=replace(cfg.train, accum_freq=cfg.train.accumulation(world)))
        cfg.resume_data = "reset" if reset else "exact"
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)

    old = resolved(1)
    with pytest.raises(ConfigError, match=r"world size 1 -> 2 would change which samples come next"):
        plan_resume(old, resolved(2), step=5, old_world=1, world=2)
    plan = plan_resume(old, resolved(2, reset=True), step=5, old_world=1, world=2)
    assert plan.reset_data and plan.changed["train.accum_freq"] == [4, 2]
    assert not plan_resume(old, resolved(1), step=5, old_world=1, world=1).changed
