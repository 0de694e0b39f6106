"""The WiSE-FT alpha sweep's points (compare_report.sweep_endpoints / sweep_points): a sweep lacking alpha 0
takes the base model's result (checkpoint=null) there, one lacking alpha 1 the checkpoint's unblended
result, only when the hashes prove those are the very weights; from a run and from eval.merge alike."""

from __future__ import annotations

import json

import torch

from bmca_clip.config import EvaluateConfig, to_object
from bmca_clip.eval import run as eval_run
from bmca_clip.eval.compare_report import model_identities, sweep_endpoints, sweep_points, wise_alphas
from bmca_clip.eval.merge import collect, merge
from bmca_clip.model import ModelConfig, build_model
from tests.helpers.config import compose_config
from tests.helpers.eval_fixtures import COLOR_TASK_BODY, make_color_task_data, write_task_yaml


def _ident(weights, checkpoint=None, alpha=None, base=None, precision="fp32", name="m"):
    config = {"model": {"name": name, "weights_sha256": weights, "checkpoint_sha256": checkpoint}}
    config["model"]["wise_ft_alpha"], config["precision"] = alpha, precision
    provenance = {} if base is None else {"wise_ft_base_sha256": base}
    return [{"task": "t", "status": "ok", "config": config, "provenance": provenance}]


def test_endpoints_only_where_the_hashes_prove_the_weights():
    records = {
        "pretrained-other": _ident("OTHER"),  # another base: never alpha 0
        "pretrained-x": _ident("BASE"),
        "ckpt-fp16": _ident("TUNED16", checkpoint="FILE", precision="amp_fp16"),  # other precision
        "ckpt": _ident("TUNED", checkpoint="FILE"),
        "ckpt-wise0.5": _ident("B5", checkpoint="FILE", alpha=0.5, base="BASE"),
        "ckpt-wise0.25": _ident("B25", checkpoint="FILE", alpha=0.25, base="BASE"),
        "old-wise0.5": _ident("O5", checkpoint="OLD", alpha=0.5),  # recorded before the base hash
        "old-wise0.7": _ident("O7", checkpoint="OLD", alpha=0.7),
        "old": _ident("OLDW", checkpoint="OLDFILE"),  # its label, another file: not alpha 1
    }
    alphas = wise_alphas(records)
    ends = sweep_endpoints(alphas, model_identities(records))
    assert ends == {"ckpt": {0.0: "pretrained-x", 1.0: "ckpt"}}
    points = sweep_points(alphas, ends)
    assert points["ckpt"] == [
        (0.0, "pretrained-x"),
        (0.25, "ckpt-wise0.25"),
        (0.5, "ckpt-wise0.5"),
        (1.0, "ckpt"),
    ]
    assert points["old"] == [(0.5, "old-wise0.5"), (0.7, "old-wise0.7")]
    # A sweep that has its own alpha 0 keeps it; one blend plus an endpoint is a sweep of two points.
    records["ckpt-wise0"] = _ident("BASE", checkpoint="FILE", alpha=0.0, base="BASE")
    assert sweep_endpoints(wise_alphas(records), model_identities(records)) == {"ckpt": {1.0: "ckpt"}}
    lone = {k: records[k] for k in ("pretrained-x", "ckpt-wise0.5")}
    assert sweep_points(wise_alphas(lone), sweep_endpoints(wise_alphas(lone), model_identities(lone))) == {
        "ckpt": [(0.0, "pretrained-x"), (0.5, "ckpt-wise0.5")]
    }
    # Another architecture or a base hash the blends disagree on proves nothing.
    records = {"p": _ident("BASE", name="other"), "c-wise0.5": _ident("X", "F", 0.5, "BASE")}
    assert sweep_endpoints(wise_alphas(records), model_identities(records)) == {}
    records = {
        "p": _ident("BASE"),
        "c-wise0.5": _ident("X", "F", 0.5, "BASE"),
        "c-wise0.7": _ident("Y", "F", 0.7),
    }
    assert sweep_endpoints(wise_alphas(records), model_identities(records)) == {}


def _eval(tmp_path, task_yaml, *overrides):
    base = ["model=bmca-tiny", f"data_root={tmp_path}", f"output_dir={tmp_path / 'eval'}", "cache_dir=null"]
    cfg = to_object(compose_config("evaluate", [*base, *overrides]), EvaluateConfig)
    cfg.suite = {"name": "colors", "tasks": [str(task_yaml)]}
    return eval_run.run(cfg)


def test_base_and_plain_checkpoint_results_are_the_sweep_ends(tmp_path, capsys):
    make_color_task_data(tmp_path / "colors")
    task_yaml = write_task_yaml(tmp_path / "tasks", "colors", COLOR_TASK_BODY)
    torch.manual_seed(7)
    base = build_model(ModelConfig(name="bmca-tiny")).model.state_dict()
    torch.save(base, tmp_path / "base.pt")
    tuned = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()}
    torch.save({"model": tuned, "step": 5}, tmp_path / "tuned.pt")
    pretrained = f"model.pretrained={tmp_path / 'base.pt'}"
    tuned_ckpt = f"checkpoint={tmp_path / 'tuned.pt'}"
    _eval(
        tmp_path,
        task_yaml,
        pretrained,
        f"checkpoint=[null,{tmp_path / 'tuned.pt'}]",
        "model.wise_ft_alpha=[0.5]",
    )
    out = tmp_path / "eval"
    assert "alpha_sweep.png" in capsys.readouterr().out  # base + one blend: a sweep of two points
    assert (out / "alpha_sweep.png").is_file()
    _eval(tmp_path, task_yaml, pretrained, tuned_ckpt, "model.wise_ft_alpha=[0.0]")
    _eval(tmp_path, task_yaml, pretrained, tuned_ckpt)  # the checkpoint unblended: label "tuned"
    weights = {
        p.parent.name: json.loads(p.read_text())["config"]["model"]["weights_sha256"]
        for p in out.glob("*/colors.json")
    }
    # What the endpoints claim, checked against the blends scored at 0: the same weights, bit for bit.
    assert weights["tuned-wise0"] == weights["pretrained-base"]
    records, _ = collect([out])
    alphas = wise_alphas(records)
    ends = sweep_endpoints({m: a for m, a in alphas.items() if m != "tuned-wise0"}, model_identities(records))
    assert ends == {"tuned": {0.0: "pretrained-base", 1.0: "tuned"}}
    assert sweep_points(alphas, sweep_endpoints(alphas, model_identities(records))) == {
        "tuned": [(0.0, "tuned-wise0"), (0.5, "tuned-wise0.5"), (1.0, "tuned")]
    }
    (out / "alpha_sweep.png").unlink()
    merge([out])
    assert (out / "alpha_sweep.png").is_file()
