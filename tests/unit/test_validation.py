"""Validation during training (bmca_clip/validation.py): R@k with ties counted against the query, the run's
own loss over the held-out pairs, the same numbers on every call, eval mode and no gradients while scoring,
and a tiny run that logs val/* at its cadence without changing what it trains."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from open_clip.loss import ClipLoss, SigLipLoss

from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.data.heldout import read_heldout
from bmca_clip.data.sources import resolve_sources
from bmca_clip.data.transforms import from_open_clip
from bmca_clip.dist import DistInfo
from bmca_clip.model import build_model
from bmca_clip.train import run as train_mod
from bmca_clip.validation import KS, PeriodicValidation, build_validation, recall_at_k
from tests.helpers.config import compose_config, tiny_train_overrides
from tests.helpers.numeric import assert_close_scaled


def test_recall_at_k_on_a_hand_made_matrix_counts_a_tie_against_the_query():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.5], [0.3, 0.8, 0.4]])
    # image 1's caption ties with caption 2; image 2's is beaten by caption 1; caption 1 by image 2.
    assert recall_at_k(sim, ks=(1, 2, 3)) == {
        "image_to_text_R@1": pytest.approx(1 / 3),
        "image_to_text_R@2": 1.0,
        "image_to_text_R@3": 1.0,
        "text_to_image_R@1": pytest.approx(1 / 3),
        "text_to_image_R@2": 1.0,
        "text_to_image_R@3": 1.0,
    }
    # A k above the number of pairs is left out: every item would be found.
    assert list(recall_at_k(sim)) == ["image_to_text_R@1", "text_to_image_R@1"]


def test_a_collapsed_model_scores_zero_and_a_nan_is_a_miss():
    flat = recall_at_k(torch.ones(12, 12))
    assert set(flat.values()) == {0.0}
    sim = torch.eye(12)
    sim[3, 3] = float("nan")
    assert recall_at_k(sim)["image_to_text_R@1"] == pytest.approx(11 / 12)
    assert recall_at_k(sim)["text_to_image_R@10"] == pytest.approx(11 / 12)


def _cfg(corpus, out, **extra) -> PretrainConfig:
    values = {"data.holdout": "noncommercial/000000.tar", "val.samples": 20, "val.batch_size": 7} | extra
    return to_object(compose_config("pretrain", tiny_train_overrides(corpus, out, **values)), PretrainConfig)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_the_validator_scores_the_pairs_with_the_runs_loss_the_same_every_call(corpus, tmp_path, loss):
    cfg = _cfg(corpus, tmp_path, loss=loss)
    torch.manual_seed(0)
    bundle = build_model(cfg.model)
    model = bundle.model.train()
    sources = resolve_sources(cfg.data, None)
    validator = build_validation(cfg, sources, bundle, DistInfo())
    modes = []
    model.register_forward_pre_hook(
        lambda module, args: modes.append((module.training, torch.is_grad_enabled()))
    )
    first, again = validator(model), validator(model)
    assert first == again and first["val/pairs"] == 20
    assert set(modes) == {(False, False)} and len(modes) == 2 * 3  # 20 pairs in batches of 7, twice
    assert model.training and all(p.grad is None for p in model.parameters())
    # The loss and R@k over all pairs at once, encoded in one batch here: the batching changes nothing.
    pairs = read_heldout(sources, cfg.data, from_open_clip(model, is_train=False), 20)
    pre = model.visual.preprocess_cfg
    mean, std = torch.tensor(pre["mean"]).view(3, 1, 1), torch.tensor(pre["std"]).view(3, 1, 1)
    with torch.no_grad():
        out = model.eval()((pairs.images / 255 - mean) / std, bundle.tokenizer(pairs.captions))
    fn = SigLipLoss() if loss == "siglip" else ClipLoss()
    args = (out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias"))
    assert_close_scaled(torch.tensor(first["val/loss"]), fn(*args), rel=1e-4)
    expected = recall_at_k(out["image_features"] @ out["text_features"].T, KS)
    assert {k: first[f"val/{k}"] for k in expected} == pytest.approx(expected, abs=1 / 20)


def test_no_validator_without_held_out_shards_or_with_every_steps_zero(corpus, tmp_path):
    bundle = build_model(_cfg(corpus, tmp_path).model)
    for extra in ({"data.holdout": "null"}, {"val.every_steps": 0}):
        cfg = _cfg(corpus, tmp_path, **extra)
        assert build_validation(cfg, resolve_sources(cfg.data, None), bundle, DistInfo()) is None


def test_the_cadence_is_every_n_steps_and_the_last():
    validator = PeriodicValidation.__new__(PeriodicValidation)
    validator.cfg = to_object(compose_config("pretrain", ["val.every_steps=4"]), PretrainConfig)
    assert [s for s in range(1, 11) if validator.should_validate(s, 10)] == [4, 8, 10]


def _lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_run_logs_val_metrics_at_its_cadence_and_trains_as_without_them(corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bmca_clip.tracking")
    train_mod.run(_cfg(corpus, tmp_path / "val", **{"val.every_steps": 2, "train.steps": 5}))
    lines = _lines(tmp_path / "val")
    val = [line for line in lines if "val/loss" in line]
    assert [line["step"] for line in val] == [2, 4, 5]
    assert {k for k in val[0] if k.startswith("val/")} == {
        "val/loss",
        "val/pairs",
        *(f"val/{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in KS),
    }
    assert sum("val/loss=" in r.getMessage() for r in caplog.records) == 3  # the console line too
    train_mod.run(_cfg(corpus, tmp_path / "off", **{"val.every_steps": 0, "train.steps": 5}))
    losses = [[line["loss"] for line in _lines(tmp_path / d) if "loss" in line] for d in ("val", "off")]
    assert losses[0] == losses[1] and len(losses[0]) == 5  # scoring draws no random number, moves no weight
