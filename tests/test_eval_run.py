"""eval.py's runner: several checkpoints in one comparison, WiSE-FT blends at several alphas."""

from __future__ import annotations

import torch
from conftest import compose_config

from bmca_clip.config import EvaluateConfig, to_object
from bmca_clip.eval import run as eval_run
from bmca_clip.model import ModelConfig, build_model


def _evaluate(corpus, tmp_path, *overrides):
    base = ["model=bmca-tiny", f"data_root={corpus.parent}", f"output_dir={tmp_path / 'eval'}"]
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
