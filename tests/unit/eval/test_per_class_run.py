"""Per-class results through eval.py's runner: in each task's JSON, and per_class_plots=true draws
<task>.confusion.png beside it, for a stored (reused) result too."""

from __future__ import annotations

import json

import pytest

from bmca_clip.config import EvaluateConfig, to_object
from bmca_clip.eval import run as eval_run
from tests.helpers.config import compose_config
from tests.helpers.eval_fixtures import COLOR_NAMES, COLOR_TASK_BODY, make_color_task_data, write_task_yaml


def _run(tmp_path, task_yaml, *overrides):
    cfg = compose_config(
        "evaluate",
        ["model=bmca-tiny", f"data_root={tmp_path}", f"output_dir={tmp_path / 'eval'}", "cache_dir=null"]
        + list(overrides),
    )
    cfg = to_object(cfg, EvaluateConfig)
    cfg.suite = {"name": "colors", "tasks": [str(task_yaml)]}
    (results,) = eval_run.run(cfg).values()
    return results[0]


def test_task_json_holds_per_class_results_and_the_plot_comes_on_request(tmp_path):
    make_color_task_data(tmp_path / "colors")  # 3 images of each of the 4 colours
    task_yaml = write_task_yaml(tmp_path / "tasks", "colors", COLOR_TASK_BODY)
    result = _run(tmp_path, task_yaml)
    (json_path,) = (tmp_path / "eval").glob("*/colors.json")
    per_class = json.loads(json_path.read_text())["per_class"]
    assert per_class == result.per_class
    assert per_class["classes"] == COLOR_NAMES and per_class["support"] == [3, 3, 3, 3]
    matrix = per_class["confusion_matrix"]
    assert [sum(row) for row in matrix] == [3, 3, 3, 3]
    hits = [matrix[k][k] for k in range(4)]
    assert per_class["recall"] == [pytest.approx(h / 3) for h in hits]
    # balanced accuracy is the mean per-class recall
    assert sum(per_class["recall"]) / 4 == pytest.approx(result.metrics["balanced_accuracy"])
    plot = json_path.with_name("colors.confusion.png")
    assert not plot.exists()

    _run(tmp_path, task_yaml, "per_class_plots=true")  # the stored result is reused and still drawn
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
