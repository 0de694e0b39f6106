"""eval.py with several models writes the paired comparison (comparison.json, .md, printed), stores each
task's per-item inputs, plots a WiSE-FT sweep against alpha, and takes compare_baseline."""

from __future__ import annotations

import json

import pytest
import torch

from bmca_clip.config import EvaluateConfig, to_object
from bmca_clip.errors import ComparisonError
from bmca_clip.eval import run as eval_run
from bmca_clip.eval.compare_report import format_comparison
from bmca_clip.eval.merge import merge
from bmca_clip.eval.paired import arrays_of, metric_of
from bmca_clip.model import ModelConfig, build_model
from tests.helpers.config import compose_config


def _evaluate(corpus, tmp_path, *overrides):
    base = [
        "model=bmca-tiny",
        f"data_root={corpus.parent}",
        f"output_dir={tmp_path / 'eval'}",
        "cache_dir=null",
    ]
    return eval_run.run(to_object(compose_config("evaluate", [*base, *overrides]), EvaluateConfig))


def test_a_wise_ft_sweep_is_compared_pairwise_and_plotted(corpus, tmp_path, capsys):
    torch.manual_seed(7)
    base = build_model(ModelConfig(name="bmca-tiny")).model.state_dict()
    torch.save(base, tmp_path / "base.pt")
    tuned = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()}
    torch.save({"model": tuned, "step": 5}, tmp_path / "tuned.pt")
    sweep = [f"model.pretrained={tmp_path / 'base.pt'}", f"checkpoint={tmp_path / 'tuned.pt'}"]
    results = _evaluate(
        corpus, tmp_path, *sweep, "model.wise_ft_alpha=[0.0,0.5,1.0]", "compare_baseline=tuned-wise1"
    )
    out = tmp_path / "eval"
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["baseline"] == "tuned-wise1" and comparison["models"] == list(results)
    assert "Paired comparison against tuned-wise1" in (out / "comparison.md").read_text()
    assert "tuned-wise0 − tuned-wise1" in capsys.readouterr().out
    assert (out / "alpha_sweep.png").stat().st_size > 1000 and (out / "summary.png").is_file()
    # summary.md ends with the same table, its significant differences marked; eval.merge writes it alike
    summary = (out / "summary.md").read_text()
    table = format_comparison(comparison)
    assert summary.endswith(f"## Paired comparison against tuned-wise1\n\n{table}\n")
    assert "tuned-wise0 − tuned-wise1" in table and any(mark in table for mark in "↑↓·")
    merge([out], tmp_path / "merged")  # against the run's compare_baseline, which suite.json records
    assert (tmp_path / "merged" / "summary.md").read_text().endswith(table + "\n")
    merge([out], tmp_path / "other", baseline="tuned-wise0")
    assert "tuned-wise1 − tuned-wise0" in (tmp_path / "other" / "summary.md").read_text()
    for label, task_results in results.items():
        for result, row in zip(task_results, comparison["tasks"], strict=True):
            record = json.loads((out / label / f"{result.task}.json").read_text())
            # The stored items give back the point value, which the comparison reports.
            assert (
                metric_of(record["items"], arrays_of(record["items"]))(None)
                == record["metrics"][result.main_metric]
            )
            assert row["values"][label] == record["metrics"][result.main_metric]
    with pytest.raises(ComparisonError, match="compare_baseline=nope"):
        _evaluate(corpus, tmp_path, *sweep, "model.wise_ft_alpha=[0.0,1.0]", "compare_baseline=nope")


def test_a_stored_result_without_per_item_inputs_is_scored_again(corpus, tmp_path, caplog):
    _evaluate(corpus, tmp_path)
    path = next((tmp_path / "eval").glob("*/*.json"))
    record = json.loads(path.read_text())
    del record["items"]  # as written before results kept them
    path.write_text(json.dumps(record))
    with caplog.at_level("INFO"):
        _evaluate(corpus, tmp_path)
    assert "items" in json.loads(path.read_text())
    assert (
        sum("cached result" in r.getMessage() for r in caplog.records)
        == len(list(path.parent.glob("*.json"))) - 1
    )


def test_probes_are_compared_on_their_own_items(corpus, tmp_path):
    """Two models scored zero-shot, by a linear probe and k-shot: every variant is compared (none skipped),
    and each stored record's items give back its main metric exactly (k-shot: the mean over draws)."""
    torch.manual_seed(3)
    torch.save(build_model(ModelConfig(name="bmca-tiny")).model.state_dict(), tmp_path / "other.pt")
    protocols = "suite.protocols=[zero_shot,linear_probe,k_shot]"
    results = _evaluate(corpus, tmp_path, f"checkpoint=[null,{tmp_path / 'other.pt'}]", protocols)
    comparison = json.loads((tmp_path / "eval" / "comparison.json").read_text())
    assert not comparison["skipped"]
    compared = {row["name"] for row in comparison["tasks"]}
    assert {"synthetic_color@linear_probe", "synthetic_color@k_shot"} <= compared
    for label, task_results in results.items():
        for result in task_results:
            record = json.loads((tmp_path / "eval" / label / f"{result.task}.json").read_text())
            point = metric_of(record["items"], arrays_of(record["items"]))(None)
            assert point == record["metrics"][result.main_metric], result.task
