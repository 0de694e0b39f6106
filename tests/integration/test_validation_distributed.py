"""Validation during training on two gloo ranks: each rank encodes its share of the held-out pairs, the
features are gathered, and both ranks get the numbers one process gets; train.py runs it in its loop."""

from __future__ import annotations

import json

import pytest

from bmca_clip.dist import DistInfo
from tests.helpers.config import REPO, tiny_train_overrides
from tests.helpers.torchrun import torchrun
from tests.helpers.val_worker import VAL, scores


def test_two_ranks_score_the_same_numbers_as_one_process(corpus, tmp_path):
    proc = torchrun(REPO / "tests/helpers/val_worker.py", corpus, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["world_size"] == 2 and ranks[0]["val/pairs"] == 21
    alone = scores(corpus, tmp_path, DistInfo())
    # The batches differ (shares of 11 and 10 against 21), so fp32 sums run in another order.
    assert ranks[0]["val/loss"] == pytest.approx(alone["val/loss"], rel=1e-4)
    for key in (k for k in alone if "_R@" in k):
        assert ranks[0][key] == pytest.approx(alone[key], abs=1 / 21), key  # one near-tie at most


def test_torchrun_train_py_validates_in_its_loop(corpus, tmp_path):
    overrides = tiny_train_overrides(
        corpus,
        tmp_path / "run",
        **VAL,
        **{"train.steps": 2, "val.every_steps": 1, "checkpoint.every_steps": 2},
    )
    proc = torchrun("train.py", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "val/loss" in x] == [1, 2]
    assert all(x["val/pairs"] == 21 for x in lines if "val/loss" in x)
