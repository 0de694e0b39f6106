"""What eval.py tells its user while it runs: the resolved config first (secrets masked), then a line per
task (k of N, name, n images) and, on a terminal, a progress bar per task over its image batches."""

from __future__ import annotations

import logging
import re
import sys

from bmca_clip.config import EvaluateConfig, to_object
from bmca_clip.eval import run as eval_run
from tests.helpers.config import compose_config

DEMO_TASKS = ("synthetic_modality", "synthetic_color", "synthetic_retrieval")


def _evaluate(corpus, tmp_path, *overrides):
    base = [
        "model=bmca-tiny",
        f"data_root={corpus.parent}",
        f"output_dir={tmp_path / 'eval'}",
        "cache_dir=null",  # every run encodes its batches: the bars have something to count
        "rerun=true",
        "batch_size=16",  # 60 images per demo task -> 4 batches
    ]
    return eval_run.run(to_object(compose_config("evaluate", [*base, *overrides]), EvaluateConfig))


def _bars(stderr: str) -> dict[str, str]:
    """The last state of each tqdm bar in stderr, by its description (the task name)."""
    states = re.findall(r"(\w+): +\d+%\|[^|]*\| (\d+/\d+)", stderr.replace("\r", "\n"))
    return dict(states)


def test_eval_prints_its_config_then_a_line_and_a_bar_per_task(corpus, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal: bars on
    with caplog.at_level(logging.INFO, logger="bmca_clip.eval"):
        _evaluate(corpus, tmp_path)
    out, err = capsys.readouterr()

    assert out.startswith("eval config (resolved):\n"), out[:300]
    header = out.split("\n\n", 1)[0]
    assert "name: demo" in header and "batch_size: 16" in header and "progress_bar: true" in header
    assert f"output_dir: {tmp_path / 'eval'}" in header  # resolved, not ${suite.name}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("task ")]
    for k, name in enumerate(DEMO_TASKS, start=1):
        assert f"task {k} of 3: {name}, 60 images" in lines, lines
    # One bar per task, each counting every batch of its images (60 / 16 -> 4).
    assert _bars(err) == {name: "4/4" for name in DEMO_TASKS}, err[-2000:]


def test_no_bar_when_switched_off_or_not_a_terminal_but_the_task_lines_stay(
    corpus, tmp_path, capsys, caplog, monkeypatch
):
    with caplog.at_level(logging.INFO, logger="bmca_clip.eval"):
        _evaluate(corpus, tmp_path)  # pytest's stderr is not a terminal: a Slurm log gets lines, no bars
    _, err = capsys.readouterr()
    assert _bars(err) == {} and "it/s" not in err
    assert (
        sum(r.getMessage().startswith("task ") and " of 3: " in r.getMessage() for r in caplog.records) == 3
    )

    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    _evaluate(corpus, tmp_path, "progress_bar=false")
    _, err = capsys.readouterr()
    assert _bars(err) == {}


def test_the_config_header_masks_secrets():
    cfg = EvaluateConfig(
        suite={"name": "demo", "tasks": []}, data_root="https://me:hunter2@example.org/d?token=abc"
    )
    header = eval_run.config_header(cfg)
    assert "hunter2" not in header and "token=abc" not in header
    assert "data_root: https://***@example.org/d?token=***" in header
