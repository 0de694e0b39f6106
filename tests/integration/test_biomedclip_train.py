"""Training options on BiomedCLIP's shape (the tiny model from the fake hub), through train.py: gradient
checkpointing on the HF tower gives the same steps (its dropout masks are replayed), amp_bf16 on the CPU with
lock_text and one unlocked layer trains exactly the parameters README says, and two gloo ranks under
torchrun take DDP steps (find_unused_parameters decided from the model)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bmca_clip.checkpoint import load_checkpoint
from tests.helpers.config import REPO, tiny_train_overrides
from tests.helpers.numeric import assert_close_scaled, max_abs
from tests.helpers.tiny_biomedclip import NAME, assert_only_unlocked_layers_moved, hub_with_tiny_biomedclip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with hub_with_tiny_biomedclip(tmp_path_factory.mktemp("hub")) as hub:
        yield hub


def _args(corpus, out, **extra) -> list[str]:
    values = {"model.name": NAME, "train.batch_size": 8, "train.steps": 2, "checkpoint.every_steps": 2}
    return ["model=biomedclip", *tiny_train_overrides(corpus, out, **(values | extra))[1:]]


def _run(hub, *cmd: str) -> None:
    done = subprocess.run(cmd, cwd=REPO, env=hub.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(out, step: int = 2) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / f"step_{step:08d}.pt")["model"]


def test_gradient_checkpointing_on_the_hf_tower_takes_the_same_steps(hub, corpus, tmp_path):
    _run(hub, sys.executable, "train.py", *_args(corpus, tmp_path / "plain"))
    _run(
        hub,
        sys.executable,
        "train.py",
        *_args(corpus, tmp_path / "ckpt", **{"model.grad_checkpointing": True}),
    )
    plain, ckpt = _weights(tmp_path / "plain"), _weights(tmp_path / "ckpt")
    scale = max_abs(plain.values())
    for key in plain:  # recomputation order may differ in the last bits, never by a dropout mask
        assert_close_scaled(ckpt[key], plain[key], rel=1e-4, scale=scale, msg=key)


def test_amp_bf16_on_the_cpu_with_one_unlocked_bert_layer_trains_only_it_and_the_rest(hub, corpus, tmp_path):
    locks = {"model.lock_text": True, "model.lock_text_unlocked_layers": 1, "model.grad_checkpointing": True}
    out = tmp_path / "bf16"
    _run(hub, sys.executable, "train.py", *_args(corpus, out, **locks, **{"train.precision": "amp_bf16"}))
    with hub.use():
        from bmca_clip.config import ModelConfig
        from bmca_clip.model import build_model

        start = build_model(ModelConfig(name=NAME)).model.state_dict()
    trained = _weights(out)
    assert_only_unlocked_layers_moved(trained, start)


def test_two_ddp_ranks_take_steps(hub, corpus, tmp_path):
    out = tmp_path / "ddp"
    _run(
        hub,
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "train.py",
        *_args(corpus, out, **{"train.batch_size": 4}),
    )
    state = load_checkpoint(out / "checkpoints" / "step_00000002.pt")
    assert state["step"] == 2 and state["samples_seen"] == 16
    assert len(state["rng"]["ranks"]) == 2
