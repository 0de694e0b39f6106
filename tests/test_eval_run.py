"""eval.py's runner: several checkpoints in one comparison, WiSE-FT blends at several alphas, stored
results reused when their config is the same."""

from __future__ import annotations

import logging

import open_clip
import torch
from conftest import compose_config

from bmca_clip.config import EvaluateConfig, to_object
from bmca_clip.eval import run as eval_run
from bmca_clip.model import ModelConfig, build_model


def _evaluate(corpus, tmp_path, *overrides, cache_dir="cache"):
    base = ["model=bmca-tiny", f"data_root={corpus.parent}", f"output_dir={tmp_path / 'eval'}"]
    base.append(f"cache_dir={tmp_path / cache_dir}" if cache_dir else "cache_dir=null")
    return eval_run.run(to_object(compose_config("evaluate", [*base, *overrides]), EvaluateConfig))


def test_wise_ft_alphas_0_and_1_reproduce_base_and_tuned(corpus, tmp_path):
    torch.manual_seed(7)
    base = build_model(ModelConfig(name="bmca-tiny")).model.state_dict()
    torch.save(base, tmp_path / "base.pt")
    tuned = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()}
    torch.save({"model": tuned, "step": 5}, tmp_path / "tuned.pt")

    blended = _evaluate(
        corpus,
        tmp_path,
        f"model.pretrained={tmp_path / 'base.pt'}",
        f"checkpoint={tmp_path / 'tuned.pt'}",
        "model.wise_ft_alpha=[0.0,0.5,1.0]",
    )
    assert (tmp_path / "eval" / "summary.md").read_text().count("WiSE-FT") >= 3
    plain = _evaluate(
        corpus,
        tmp_path,
        f"model.pretrained={tmp_path / 'base.pt'}",
        f"checkpoint=[null,{tmp_path / 'tuned.pt'}]",
    )
    labels = list(blended)
    assert len(labels) == 3 and all("WiSE-FT" in label for label in labels)
    (base_label, tuned_label) = plain
    metrics = {label: [r.metrics for r in results] for label, results in {**blended, **plain}.items()}
    assert metrics[labels[0]] == metrics[base_label]  # alpha 0 is the base model
    assert metrics[labels[2]] == metrics[tuned_label]  # alpha 1 is the tuned checkpoint


def test_a_rerun_reuses_stored_results_with_the_same_config(corpus, tmp_path, caplog, monkeypatch):
    calls = []
    original = open_clip.model.CLIP.encode_image
    monkeypatch.setattr(
        open_clip.model.CLIP, "encode_image", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    first = _evaluate(corpus, tmp_path, cache_dir=None)  # no embedding cache: only stored JSON can help
    stored = {p: p.read_text() for p in (tmp_path / "eval").glob("*/*.json")}
    assert len(stored) == 3 and calls
    calls.clear()

    with caplog.at_level(logging.INFO, logger="bmca_clip.eval.run"):
        second = _evaluate(corpus, tmp_path, cache_dir=None)

    assert calls == []
    assert caplog.text.count("cached result") == 3
    assert {p: p.read_text() for p in stored} == stored  # not rewritten
    assert [[(r.task, r.metrics, r.n) for r in rs] for rs in first.values()] == [
        [(r.task, r.metrics, r.n) for r in rs] for rs in second.values()
    ]
    assert (tmp_path / "eval" / "summary.png").is_file()

    # rerun=true scores every task again, whatever is stored.
    _evaluate(corpus, tmp_path, "rerun=true", cache_dir=None)
    assert calls
