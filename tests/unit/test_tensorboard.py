"""logger.tensorboard=true: the scalars of metrics.jsonl, step for step, in <output_dir>/tensorboard; a
resumed run appends without a step twice; without the tensorboard package, one line naming the extra."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from bmca_clip.config import ConfigError, PretrainConfig, to_object
from bmca_clip.train import run as train_mod
from tests.helpers.config import compose_config, tiny_train_overrides
from tests.helpers.numeric import assert_close_scaled

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _run(corpus, out_dir, *more):
    overrides = tiny_train_overrides(corpus, out_dir, **{"logger.tensorboard": "true"}) + list(more)
    train_mod.run(to_object(compose_config("pretrain", overrides), PretrainConfig))


def _jsonl(out_dir) -> dict[int, dict]:
    """The last row logged for each step (a resumed run logs its steps again)."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}


def _events(folder) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_same(events: dict, logged: dict[int, dict]) -> None:
    expected: dict[str, list[tuple[int, float]]] = {}
    for step, row in sorted(logged.items()):
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                expected.setdefault(key, []).append((step, float(value)))
    assert sorted(events) == sorted(expected)
    for tag, points in expected.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag  # each step once, in order
        actual, wanted = ([v for _, v in got] for got in (events[tag], points))
        assert_close_scaled(
            torch.tensor(actual, dtype=torch.float64), torch.tensor(wanted, dtype=torch.float64), rel=1e-6
        )


def test_tensorboard_holds_the_scalars_of_metrics_jsonl_and_a_resume_appends_without_duplicates(
    corpus, tmp_path
):
    out = tmp_path / "run"
    _run(corpus, out)
    logged = _jsonl(out)
    assert sorted(logged) == [1, 2, 3, 4, 5, 6] and "loss" in logged[1] and "data/decoded" in logged[1]
    _assert_same(_events(out / "tensorboard"), logged)

    (out / "checkpoints" / "step_00000006.pt").unlink()  # a crash after the step-3 checkpoint
    _run(corpus, out, "resume=latest")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 9  # steps 4..6 twice in the JSONL
    _assert_same(_events(out / "tensorboard"), _jsonl(out))  # in TensorBoard: once each, the newest


def test_a_missing_tensorboard_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = compose_config("pretrain", ["logger.tensorboard=true"])
    with pytest.raises(ConfigError) as refused:
        to_object(cfg, PretrainConfig)
    assert str(refused.value) == (
        "logger.tensorboard=true needs tensorboard: pip install 'bmca-clip[tensorboard]'"
    )
    to_object(compose_config("pretrain", []), PretrainConfig)  # off by default: nothing to import
