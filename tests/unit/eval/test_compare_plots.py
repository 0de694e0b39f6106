"""The figures people read: summary.png's whiskers (the joint interval of each mean, or a lone task's CI)
and the WiSE-FT alpha sweep (mean main metric vs alpha per domain, with intervals)."""

import json
import math

import pytest
import torch
from PIL import Image

from bmca_clip.errors import ComparisonError
from bmca_clip.eval.compare import compare, mean_intervals
from bmca_clip.eval.compare_report import plot_alpha_sweep, wise_alphas
from bmca_clip.eval.merge import merge
from bmca_clip.eval.paired import classification_items
from bmca_clip.eval.summary import _whisker, summarize, write_summary

LABELS = torch.arange(80) % 2


def _record(task, domain, n_right, alpha=None, ci=None, labels=LABELS):
    preds = labels.clone()
    preds[n_right:] = 1 - labels[n_right:]
    logits = torch.nn.functional.one_hot(preds, 2).float()
    return {
        "task": task,
        "type": "classification",
        "domain": domain,
        "main_metric": "accuracy",
        "status": "ok",
        "metrics": {"accuracy": n_right / 80},
        "ci": ci,
        "items": classification_items("accuracy", logits, labels, None),
        "config": {"model": {"wise_ft_alpha": alpha}},
    }


def test_whiskers_are_the_joint_interval_of_a_mean_or_a_lone_task_ci(tmp_path):
    results = {
        m: [
            _record("a", "x", 40 + k),
            _record("b", "x", 50 + k),
            _record("c", "y", 60 + k, ci={"low": 0.5, "high": 0.9}),
        ]
        for m, k in (("A", 0), ("B", 10))
    }
    intervals = mean_intervals(compare(results, n_resamples=200))
    summary = summarize(results)
    means = {(m.model, m.name): m for m in summary.means()}
    low, high = intervals["B", "x"]
    below, above = _whisker(summary, intervals, "B", "x", means["B", "x"])
    assert below == pytest.approx(100 * (means["B", "x"].value - low))
    assert above == pytest.approx(100 * (high - means["B", "x"].value))
    assert 0 < below and 0 < above
    # Without the comparison's intervals a domain of one task shows that task's own CI, others none.
    assert _whisker(summary, {}, "A", "y", means["A", "y"]) == pytest.approx(
        (100 * (0.75 - 0.5), 100 * (0.9 - 0.75))
    )
    assert all(math.isnan(w) for w in _whisker(summary, {}, "A", "x", means["A", "x"]))
    write_summary(results, tmp_path, intervals=intervals)
    with Image.open(tmp_path / "summary.png") as png:
        assert png.format == "PNG" and png.width > 300


def test_the_alpha_sweep_plots_blends_of_one_checkpoint_by_alpha(tmp_path):
    results = {
        f"demo-step300-wise{a:g}": [_record("a", "x", 40 + int(40 * a), a), _record("c", "y", 50, a)]
        for a in (0.0, 0.5, 1.0)
    }
    results["untrained"] = [_record("a", "x", 40), _record("c", "y", 50)]
    alphas = wise_alphas(results)
    assert alphas == {"demo-step300-wise0": 0.0, "demo-step300-wise0.5": 0.5, "demo-step300-wise1": 1.0}
    comparison = compare(results, n_resamples=100)
    path = plot_alpha_sweep(comparison, alphas, tmp_path / "alpha_sweep.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width > 300
    # One blend alone is no sweep: no figure.
    assert plot_alpha_sweep(comparison, {"demo-step300-wise0.5": 0.5}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_merge_compares_stored_records_and_refuses_other_items(tmp_path, capsys):
    for model, n_right in (("A", 40), ("B", 70)):
        record = {"schema_version": 2, "model_label": model, **_record("a", "x", n_right)}
        (tmp_path / model).mkdir()
        (tmp_path / model / "a.json").write_text(json.dumps(record))
    merge([tmp_path])
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert comparison["tasks"][0]["diffs"]["B"]["significant"] and "↑" in capsys.readouterr().out
    other = json.loads((tmp_path / "B" / "a.json").read_text())
    other["items"] = _record("a", "x", 70, labels=1 - LABELS)["items"]
    (tmp_path / "B" / "a.json").write_text(json.dumps(other))
    with pytest.raises(ComparisonError, match="task 'a'"):
        merge([tmp_path])
