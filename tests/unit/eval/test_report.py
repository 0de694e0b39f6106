"""Results people can use: the per-task JSON schema and config hash, per-domain and overall means worked
out by hand, the summary's Markdown, CSVs and PNG."""

import csv
import hashlib
import json

import pytest
from PIL import Image

from bmca_clip.eval.harness import TaskResult
from bmca_clip.eval.records import SCHEMA_VERSION, config_hash, read_task_json, write_task_json
from bmca_clip.eval.report import cached_result, result_config, result_from_record
from bmca_clip.eval.summary import CSV_COLUMNS, format_domain_table, format_table, summarize, write_summary
from bmca_clip.eval.tasks import load_task
from tests.helpers.eval_fixtures import COLOR_TASK_BODY, write_task_yaml


def _result(task, domain, status="ok", value=None, chance=None, ci=None):
    result = TaskResult(
        task=task,
        type="classification",
        domain=domain,
        status=status,
        main_metric="balanced_accuracy",
        metrics={} if value is None else {"balanced_accuracy": value},
        chance=chance,
        error="no such folder" if status == "failed" else None,
    )
    result.ci = ci
    return result


def _ci(low, high):
    return {"low": low, "high": high, "level": 0.95, "method": "percentile bootstrap", "unit": "item"}


# Model A has every task; B failed p2 and never ran r1.
RESULTS = {
    "A": [
        _result("p1", "pathology", value=0.8, chance=0.5, ci=_ci(0.7, 0.9)),
        _result("p2", "pathology", value=0.4, chance=0.25),
        _result("r1", "radiology", value=0.9, chance=0.2),
    ],
    "B": [
        _result("p1", "pathology", value=0.6, chance=0.5),
        _result("p2", "pathology", status="failed"),
    ],
}


def test_domain_and_overall_means_by_hand():
    means = {(m.model, m.name): m for m in summarize(RESULTS).means()}
    a = {name: means["A", name] for name in ("pathology", "radiology", "all tasks", "all domains")}
    assert a["pathology"].value == pytest.approx((0.8 + 0.4) / 2)
    assert a["pathology"].chance == pytest.approx((0.5 + 0.25) / 2)
    assert a["radiology"].value == pytest.approx(0.9) and a["radiology"].chance == pytest.approx(0.2)
    assert a["all tasks"].value == pytest.approx((0.8 + 0.4 + 0.9) / 3)  # 0.7: every task counts once
    assert a["all tasks"].chance == pytest.approx((0.5 + 0.25 + 0.2) / 3)
    assert a["all domains"].value == pytest.approx((0.6 + 0.9) / 2)  # 0.75: every domain counts once
    assert a["all domains"].chance == pytest.approx((0.375 + 0.2) / 2)
    # B: only p1 has a value, so its means cover 1 of 2 pathology tasks, 1 of 3 tasks, 1 of 2 domains.
    b = {name: means["B", name] for name in ("pathology", "radiology", "all tasks", "all domains")}
    assert (b["pathology"].value, b["pathology"].n_values, b["pathology"].n_tasks) == (0.6, 1, 2)
    assert b["radiology"].value is None and b["radiology"].chance == pytest.approx(0.2)
    assert (b["all tasks"].value, b["all tasks"].n_values, b["all tasks"].n_tasks) == (0.6, 1, 3)
    assert (b["all domains"].value, b["all domains"].n_values, b["all domains"].n_tasks) == (0.6, 1, 2)


def test_tables_show_ci_chance_failed_missing_and_partial_means():
    table = format_table(RESULTS)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "80.00 [70.00, 90.00]" in rows["p1"] and "50.00" in rows["p1"]  # value [CI], chance
    assert "failed" in rows["p2"] and "missing" in rows["r1"]
    assert "70.00" in rows["mean over tasks"] and "60.00 (1/3)" in rows["mean over tasks"]
    domains = format_domain_table(RESULTS)
    rows = {line.split("|")[1].strip(): line for line in domains.splitlines()[2:]}
    assert list(rows) == ["pathology", "radiology", "mean over tasks", "mean over domains"]
    assert "37.50" in rows["pathology"] and "60.00 (1/2)" in rows["pathology"]
    assert "75.00" in rows["mean over domains"] and "28.75" in rows["mean over domains"]


def test_write_summary_writes_markdown_csvs_and_a_png(tmp_path):
    tasks = [{"name": n, "type": "classification", "domain": d, "main_metric": "balanced_accuracy"} for n, d in
             [("p1", "pathology"), ("p2", "pathology"), ("r1", "radiology"), ("s1", "surgery")]]  # fmt: skip
    md, csv_path = write_summary(RESULTS, tmp_path, tasks)
    text = md.read_text()
    assert "## Per domain" in text and "## Per task" in text and "95% confidence interval" in text
    assert "- B / p2: no such folder" in text and "- B / r1" in text and "- A / s1" in text
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    cells = {(r["model"], r["task"]): r for r in rows}
    assert len(rows) == 8  # 2 models x 4 tasks, s1 missing for both
    assert (cells["A", "p1"]["value"], cells["A", "p1"]["ci_low"], cells["A", "p1"]["ci_high"]) == (
        "0.8",
        "0.7",
        "0.9",
    )
    assert cells["B", "p2"]["status"] == "failed" and cells["B", "r1"]["status"] == "missing"
    with (tmp_path / "summary_domains.csv").open() as f:
        means = {(r["model"], r["scope"], r["name"]): r for r in csv.DictReader(f)}
    assert float(means["A", "domains", "all domains"]["value"]) == pytest.approx(0.75)
    assert (
        means["A", "domain", "surgery"]["value"] == "" and means["A", "domain", "surgery"]["n_tasks"] == "1"
    )
    with Image.open(tmp_path / "summary.png") as png:
        assert png.format == "PNG" and png.width > 300 and png.height > 200


def test_task_json_holds_ci_hashes_and_reads_back(tmp_path):
    task = load_task(write_task_yaml(tmp_path / "tasks", "colors", COLOR_TASK_BODY + "n_expected: 12\n"))
    model = {"name": "tiny", "weights_sha256": "ab" * 32, "checkpoint_sha256": None, "wise_ft_alpha": None}
    settings = {
        "precision": "fp32",
        "seed": 0,
        "preprocess": "Compose(...)",
        "bootstrap": {"n_resamples": 1000},
    }
    config = result_config(task, model, settings)
    result = _result("colors", "synthetic", value=0.5, chance=0.25, ci=_ci(0.3, 0.7))
    result.source = {"loader": "csv", "revision": "abc123"}
    path = write_task_json(result, tmp_path / "out", {"model": "tiny"}, config, "tiny (untrained)")
    record = json.loads(path.read_text())
    assert record["schema_version"] == SCHEMA_VERSION == 2
    assert record["model_label"] == "tiny (untrained)" and record["ci"]["low"] == 0.3
    assert record["task_yaml_sha256"] == hashlib.sha256(task.yaml_path.read_bytes()).hexdigest()
    assert record["dataset_revision"] == "abc123"
    assert record["config"]["model"]["weights_sha256"] == "ab" * 32
    assert record["config_hash"] == config_hash(config) and len(record["config_hash"]) == 64
    back = result_from_record(read_task_json(path))
    assert back == result and back.ci == result.ci

    assert cached_result(path, record["config_hash"]) == result
    assert cached_result(path, "0" * 64) is None
    # Any change of the task file, the weights or a setting is another config.
    task.yaml_path.write_text(task.yaml_path.read_text().replace("a {} square.", "a {} square!"))
    assert config_hash(result_config(load_task(task.yaml_path), model, settings)) != record["config_hash"]
    assert (
        config_hash(result_config(task, {**model, "weights_sha256": "cd" * 32}, settings))
        != record["config_hash"]
    )
    assert (
        config_hash(result_config(task, model, {**settings, "precision": "amp_bf16"}))
        != record["config_hash"]
    )


def test_failed_or_newer_records_are_never_reused(tmp_path):
    failed = write_task_json(_result("t", "synthetic", status="failed"), tmp_path, {}, {"task": "t"})
    assert cached_result(failed, json.loads(failed.read_text())["config_hash"]) is None
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**json.loads(failed.read_text()), "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ValueError, match="newer than this code reads"):
        read_task_json(newer)
