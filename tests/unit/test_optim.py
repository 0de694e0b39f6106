"""Parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

import open_clip
import pytest

from bmca_clip.config import OptimConfig
from bmca_clip.optim import build_optimizer, build_scheduler, decays, lr_factor


def test_no_weight_decay_on_norms_biases_embeddings_and_logit_scale():
    model = open_clip.create_model("bmca-tiny")
    names = dict(model.named_parameters())
    for name in (
        "logit_scale",
        "positional_embedding",
        "token_embedding.weight",
        "visual.class_embedding",
        "ln_final.weight",
        "visual.ln_post.bias",
        "transformer.resblocks.0.attn.in_proj_bias",
    ):
        assert not decays(name, names[name]), name
    for name in ("visual.conv1.weight", "transformer.resblocks.0.mlp.c_fc.weight", "text_projection"):
        assert decays(name, names[name]), name

    opt = build_optimizer(model, OptimConfig(weight_decay=0.2))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.2 and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(names)
    assert any(p is names["logit_scale"] for p in plain["params"])


def test_linear_warmup_then_cosine_to_lr_min():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, lr_min=0.1, schedule="cosine")
    assert lr_factor(0, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(500, 110, cfg) == pytest.approx(0.1)  # never below lr_min past the end


def test_scheduler_drives_the_optimizer_lr():
    model = open_clip.create_model("bmca-tiny")
    cfg = OptimConfig(lr=0.01, warmup_steps=4, schedule="constant")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=100)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])


def test_a_resume_that_replans_the_schedule_continues_from_the_factor_in_force():
    """resumed_at=(s0, f0): f0 at s0 (no jump), then a cosine half-wave to lr_min/lr at the new total;
    a constant schedule stays at f0."""
    cfg = OptimConfig(lr=1.0, warmup_steps=10, lr_min=0.1, schedule="cosine")
    assert lr_factor(50, 200, cfg, resumed_at=(50, 0.7)) == pytest.approx(0.7)
    assert lr_factor(125, 200, cfg, resumed_at=(50, 0.7)) == pytest.approx(0.1 + 0.6 * 0.5)
    assert lr_factor(200, 200, cfg, resumed_at=(50, 0.7)) == pytest.approx(0.1)
    assert lr_factor(49, 200, cfg, resumed_at=(50, 0.7)) == lr_factor(49, 200, cfg)  # before: unchanged
    flat = OptimConfig(lr=1.0, warmup_steps=10, schedule="constant")
    assert lr_factor(150, 200, flat, resumed_at=(50, 0.7)) == 0.7
