"""Real multi-process training with torchrun and gloo: two ranks with batch B are one rank with 2B."""

from __future__ import annotations

import json

import pytest
import torch

from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.dist import DistInfo
from bmca_clip.model import ModelConfig, build_model
from bmca_clip.train.trainer import Trainer
from tests.helpers.batch import global_batch
from tests.helpers.config import REPO, compose_config, tiny_train_overrides
from tests.helpers.numeric import assert_close_scaled, max_abs
from tests.helpers.torchrun import torchrun


def _single_process(loss: str) -> tuple[float, dict]:
    cfg = to_object(
        compose_config("pretrain", ["model=bmca-tiny", "optim.grad_clip_norm=null", f"loss={loss}"]),
        PretrainConfig,
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="bmca-tiny", init_logit_bias=cfg.model.init_logit_bias)).model
    trainer = Trainer(cfg, DistInfo(), model)
    loss_value = trainer.train_step([global_batch(16)])["loss"].item()
    return loss_value, {n: p.grad for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("accum, loss", [(1, "clip"), (2, "clip"), (1, "siglip")])
def test_two_ranks_with_batch_b_equal_one_rank_with_2b(tmp_path, accum, loss):
    """Gradients after DDP's all-reduce equal the single-process gradients of the whole batch (fp32,
    rtol 1e-4: the sums run in another order), and every rank logs the global batch's loss."""
    proc = torchrun(REPO / "tests/helpers/dist_worker.py", tmp_path, accum, loss)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["probe"] == 3.0 for r in ranks)  # one group, not two lone processes
    big_loss, big_grads = _single_process(loss)
    assert ranks[0]["loss"] == pytest.approx(big_loss, rel=1e-5)
    assert ranks[1]["loss"] == pytest.approx(ranks[0]["loss"], rel=1e-6)
    grad_scale = max_abs(big_grads.values())
    for name, grad in big_grads.items():
        assert_close_scaled(ranks[0]["grads"][name], grad, rel=1e-4, scale=grad_scale, msg=name)
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name


def test_torchrun_train_py_saves_every_ranks_data_position(corpus, tmp_path):
    overrides = tiny_train_overrides(
        corpus, tmp_path / "run", **{"train.steps": 4, "checkpoint.every_steps": 2}
    )
    proc = torchrun("train.py", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert state["step"] == 4 and state["samples_seen"] == 4 * 16 * 2
    assert len(state["data"]["ranks"]) == 2
    for rank in state["data"]["ranks"]:  # each rank's own stream took its 4 batches of 16
        assert rank["positions"]["0"]["sample"] == 4 * 16
    assert len(state["rng"]["ranks"]) == 2  # and each rank's own: see the periodic-eval test below


def test_periodic_eval_splits_the_suite_across_ranks_and_logs_every_task(corpus, tmp_path):
    overrides = tiny_train_overrides(
        corpus,
        tmp_path / "run",
        **{"train.steps": 2, "eval.suite": "demo", "eval.every_steps": 2, "eval.data_root": corpus.parent},
    )
    proc = torchrun("train.py", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scores = next(row for row in rows if "eval/mean" in row)
    tasks = {"synthetic_modality", "synthetic_color", "synthetic_retrieval"}
    assert {k.removeprefix("eval/") for k in scores if k.startswith("eval/") and k != "eval/mean"} == tasks
    assert all(0.0 <= scores[f"eval/{t}"] <= 1.0 for t in tasks)
    # Scoring other tasks drew other random numbers (a DataLoader seed per task): the checkpoint holds each
    # rank's own RNG, not rank 0's twice, so a resumed rank 1 continues its own stream.
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000002.pt", weights_only=True)
    rngs = state["rng"]["ranks"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])
