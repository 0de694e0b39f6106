"""per_class.md (eval/per_class_report.py): each task's per-class numbers as Markdown tables beside
summary.md, the same numbers as the JSON's per_class, from a run and from eval.merge alike."""

from __future__ import annotations

import json
import shutil

import torch

from bmca_clip.config import EvaluateConfig, to_object
from bmca_clip.eval import run as eval_run
from bmca_clip.eval.merge import merge
from bmca_clip.eval.per_class import per_class_record
from bmca_clip.eval.per_class_report import REPORT_FILE, format_per_class, write_per_class_report
from tests.helpers.config import compose_config
from tests.helpers.eval_fixtures import COLOR_TASK_BODY, make_color_task_data, write_task_yaml


def _record(task, per_class, kind="classification", status="ok", n=10):
    return {"task": task, "type": kind, "domain": "d", "main_metric": "m", "status": status, "n": n,
            "metrics": {"m": 0.5}, "per_class": per_class}  # fmt: skip


def _rows(markdown: str, title: str) -> dict[str, list[str]]:
    """The table after the heading `title` (up to the next heading): first cell -> the other cells."""
    section = markdown.split(title + "\n", 1)[1].split("\n#", 1)[0]
    cells = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ")
    ]
    return {row[0]: row[1:] for row in cells[1:]}  # cells[0]: the header


def test_binary_table_holds_the_json_numbers_with_specificity():
    # 6 negatives (4 right), 4 positives (3 right): hand-checked rates.
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    preds = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    per_class = per_class_record(preds, labels, ["benign", "malignant"], n_resamples=200)
    assert per_class["recall"][1] == 3 / 4 and per_class["precision"][1] == 3 / 5
    assert per_class["specificity"][1] == 4 / 6  # malignant's specificity: benign's recall
    text = format_per_class({"A": [_record("lesion", per_class)]})
    rows = _rows(text, "### A (n=10)")
    assert list(rows) == ["benign", "malignant"]
    low, high = per_class["recall_ci"][1]
    assert rows["malignant"][0] == "4"
    assert rows["malignant"][1] == f"75.0 [{100 * low:.1f}, {100 * high:.1f}]"
    low, high = per_class["precision_ci"][1]
    assert rows["malignant"][2] == f"60.0 [{100 * low:.1f}, {100 * high:.1f}]"
    low, high = per_class["specificity_ci"][1]
    assert rows["malignant"][3] == f"66.7 [{100 * low:.1f}, {100 * high:.1f}]"
    assert rows["benign"][:2] == ["6", f"66.7 [{100 * per_class['recall_ci'][0][0]:.1f}, "
                                       f"{100 * per_class['recall_ci'][0][1]:.1f}]"]  # fmt: skip
    assert "specificity [95% CI]" in text and "200 resamples by item, seed 0" in text


def test_many_classes_name_the_weakest_and_undefined_rates_read_na():
    classes = [f"c{k}" for k in range(6)]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])  # c5 never present: recall n/a
    preds = torch.tensor([0, 0, 1, 0, 2, 2, 3, 3, 0, 0])  # c4 never predicted: precision n/a
    per_class = per_class_record(preds, labels, classes, n_resamples=0)
    text = format_per_class({"A": [_record("t", per_class)]})
    rows = _rows(text, "### A (n=10)")
    assert rows["c5"] == ["0", "n/a", "n/a"]  # 3 columns: no specificity, no interval
    assert rows["c4"] == ["2", "0.0", "n/a"]
    assert rows["c0"] == ["2", "100.0", f"{100 * 2 / 5:.1f}"]
    assert "Lowest sensitivity: c4 0.0, c1 50.0, c0 100.0." in text
    assert "no intervals were computed" in text


def test_multilabel_failed_old_and_retrieval_records():
    multilabel = {"classes": ["effusion", "edema"], "support": [3, 0], "average_precision": [0.75, None]}
    results = {
        "A": [
            _record("chest", multilabel, kind="multilabel"),
            _record("old", None),  # written before per_class existed: no key at all
            _record("broken", None, status="failed", n=None),
            _record("flickr", None, kind="retrieval"),
            _record("chest@k_shot", None, kind="k_shot"),
        ],
        "B": [_record("chest", multilabel, kind="multilabel")],
    }
    del results["A"][1]["per_class"]
    tasks = [{"name": n} for n in ("flickr", "old", "chest", "broken", "chest@k_shot")]
    text = format_per_class(results, tasks)
    chest = text.split("## chest")[1]
    assert _rows(chest, "### A (n=10)") == {"effusion": ["3", "75.0"], "edema": ["0", "n/a"]}
    assert "average precision" in text and "## flickr" not in text  # retrieval: no section
    assert text.index("## old") < text.index("## chest") < text.index("## broken")  # the suite's order
    assert "_no per-class results in this record" in text.split("## old")[1].split("\n## ")[0]
    assert "_failed" in text.split("## broken")[1]
    assert "k-shot scores are means over draws" in text.split("## chest@k_shot")[1]
    assert text.split("## chest")[1].split("\n## ")[0].count("### ") == 2  # both models, one table each


def test_a_run_writes_it_and_merge_writes_the_same_file(tmp_path):
    make_color_task_data(tmp_path / "colors")
    task_yaml = write_task_yaml(tmp_path / "tasks", "colors", COLOR_TASK_BODY)
    out = tmp_path / "eval"
    cfg = compose_config(
        "evaluate", ["model=bmca-tiny", f"data_root={tmp_path}", f"output_dir={out}", "cache_dir=null"]
    )
    cfg = to_object(cfg, EvaluateConfig)
    cfg.suite = {"name": "colors", "tasks": [str(task_yaml)]}
    eval_run.run(cfg)
    written = (out / REPORT_FILE).read_text()
    (record_path,) = out.glob("*/colors.json")
    record = json.loads(record_path.read_text())
    rows = _rows(written, f"### {record['model_label']} (n=12)")
    per_class = record["per_class"]
    assert list(rows) == per_class["classes"]
    for k, name in enumerate(per_class["classes"]):
        low, high = per_class["recall_ci"][k] or (None, None)
        shown = f"{100 * per_class['recall'][k]:.1f}"
        assert rows[name][:2] == [
            "3",
            shown if low is None else f"{shown} [{100 * low:.1f}, {100 * high:.1f}]",
        ]
    merged = tmp_path / "merged"
    shutil.copytree(out, merged)
    (merged / REPORT_FILE).unlink()
    merge([merged])
    assert (merged / REPORT_FILE).read_text() == written
    assert write_per_class_report({}, tmp_path / "empty").read_text().startswith("# Per-class results")
