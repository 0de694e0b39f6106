"""Issue 15's parts together under real torchrun (gloo): an fsdp run with shards in flight and validation
on a held-out shard, saved on 2 ranks, resumes on 1 (DCP reshards the weights, the logical streams move to
the one rank) and goes on validating on the same held-out pairs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from bmca_clip.checkpoint import list_checkpoints, load_checkpoint
from bmca_clip.dcp_convert import convert
from tests.helpers.config import tiny_train_overrides
from tests.helpers.torchrun import torchrun


def _overrides(corpus, out, **extra) -> list[str]:
    values = {
        "train.strategy": "fsdp",
        "train.batch_size": 8,
        "train.global_batch": 16,  # 8 x 2 ranks, or 8 x 1 rank x accumulation 2 after the resume
        "train.steps": 4,
        "checkpoint.every_steps": 2,
        "data.shards_in_flight": 4,
        "data.holdout": "commercial/000000.tar",
        "val.every_steps": 2,
        "val.samples": 48,
    }
    return tiny_train_overrides(corpus, out, **(values | extra))


def _val_rows(out) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows if "val/loss" in row}


def test_fsdp_run_with_validation_saved_on_two_ranks_resumes_on_one(corpus, tmp_path):
    run = tmp_path / "run"
    proc = torchrun("train.py", *_overrides(corpus, run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    val = _val_rows(run)
    assert sorted(val) == [2, 4]
    assert all(val[s]["val/pairs"] == 48 and math.isfinite(val[s]["val/loss"]) for s in val)
    assert all(0.0 <= val[s]["val/image_to_text_R@1"] <= val[s]["val/image_to_text_R@10"] <= 1.0 for s in val)

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004.dcp")
    (resumed / "metrics.jsonl").write_text("")
    proc = torchrun("train.py", *_overrides(corpus, resumed, resume="latest"), nproc=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = _val_rows(resumed)
    assert sorted(again) == [4] and again[4]["val/pairs"] == 48 and math.isfinite(again[4]["val/loss"])

    state = load_checkpoint(list_checkpoints(resumed / "checkpoints")[-1])
    before = load_checkpoint(list_checkpoints(run / "checkpoints")[0])
    assert state["step"] == 4 and state["samples_seen"] == 4 * 16
    assert state["sharded"] == {"format": "dcp", "world_size": 1}
    # Both logical streams of the 2-rank run now on the one rank, each past where step 2 left it.
    (only,) = state["data"]["ranks"]
    assert only["num_streams"] == 2
    old = [r["positions"]["0"]["sample"] for r in before["data"]["ranks"]]
    new = [only["positions"][str(j)]["sample"] for j in range(2)]
    assert all(n > o for n, o in zip(new, old, strict=True)) and sum(new) - sum(old) >= 2 * 16
    # DCP wrote the 2-rank shards back as one rank's: the converted weights are whole and finite.
    weights = torch.load(convert(Path(state["dcp"]), tmp_path / "one.pt"), weights_only=True)["model"]
    assert weights["logit_scale"].shape == () and all(torch.isfinite(t).all() for t in weights.values())
