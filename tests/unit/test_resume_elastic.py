"""What a resume may change about the topology once the checkpoint's logical streams are known
(train/resume.py with `streams`; the streams themselves: tests/unit/data/test_elastic.py)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bmca_clip.config import ConfigError, PretrainConfig, to_object
from bmca_clip.train.resume import plan_resume
from bmca_clip.train.start import data_streams, rank_data_state
from tests.helpers.config import compose_config


def _resolved(**overrides) -> dict:
    values = {"model": "bmca-tiny", "data": "local", "data.train_shards": "/data/shards", **overrides}
    cfg = to_object(compose_config("pretrain", [f"{k}={v}" for k, v in values.items()]), PretrainConfig)
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def test_world_size_and_workers_apply_when_the_logical_streams_allow_it():
    plan = plan_resume(
        _resolved(), _resolved(**{"data.num_workers": 1}), step=3, old_world=2, world=4, streams=4
    )
    assert plan.changed == {"data.num_workers": [2, 1], "world size": [2, 4]} and not plan.reset_data
    # Unknown logical streams (the caller has no checkpoint data): a topology change stays a stream change.
    with pytest.raises(ConfigError, match="world size 2 -> 4 would change which samples come next"):
        plan_resume(_resolved(), _resolved(), step=3, old_world=2, world=4)


def test_more_processes_than_logical_streams_is_refused_in_one_line_unless_the_stream_is_reset():
    with pytest.raises(ConfigError) as err:
        plan_resume(_resolved(), _resolved(), step=3, old_world=2, world=5, streams=4)
    message = str(err.value)
    assert "4 logical streams (data.streams)" in message and "resume on at most 4" in message
    assert "multiple of the largest" in message and len(message.splitlines()) == 1
    reset = plan_resume(_resolved(), _resolved(resume_data="reset"), step=3, old_world=2, world=5, streams=4)
    assert reset.reset_data


@pytest.mark.parametrize("new, applied", [(0, True), (4, True), (8, False)])
def test_data_streams_changes_the_stream_only_when_it_differs_from_the_checkpoints(new, applied):
    old = _resolved(**{"data.streams": 4})
    args = dict(step=3, old_world=1, world=1, streams=4)
    if applied:
        assert not plan_resume(old, _resolved(**{"data.streams": new}), **args).reset_data
    else:
        with pytest.raises(ConfigError, match="data.streams 4 -> 8 .*resume_data=reset"):
            plan_resume(old, _resolved(**{"data.streams": new}), **args)


def _checkpoint(workers: int, *held: int) -> dict:
    ranks = [
        {"positions": {str(j): {"sample": 10 * r + j} for j in range(n)}, "next_stream": 1, "num_streams": n}
        | {"sources": ["train"], "commits": {}}
        for r, n in enumerate(held)
    ]
    return {"data": {"ranks": ranks}, "config": {"data": {"num_workers": workers}}}


def test_each_rank_takes_its_streams_from_every_ranks_positions():
    state = _checkpoint(2, 2, 2)  # 2 ranks x 2 workers: logical streams 0, 1 | 2, 3
    assert data_streams(state) == 4 and data_streams(None) is None
    assert rank_data_state(state, 1, 2, num_workers=2) is state["data"]["ranks"][1]  # same topology
    one = rank_data_state(state, 0, 1, num_workers=2)
    assert [p["sample"] for p in one["positions"].values()] == [0, 1, 10, 11] and one["next_stream"] == 0
    regrouped = rank_data_state(state, 1, 2, num_workers=1)  # same ranks, other workers: same block
    assert regrouped["positions"] == state["data"]["ranks"][1]["positions"]
    assert regrouped["next_stream"] == 0
