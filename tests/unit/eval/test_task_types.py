"""Adding a task type is one module plus one registry line (issue 13): a type that only this test
registers is checked on load, built, scored through the harness and the encoder interface, end to end,
with no edit anywhere else in the package."""

from __future__ import annotations

import pytest
import torch

from bmca_clip.eval.harness import evaluate_suite
from bmca_clip.eval.metrics import Scores
from bmca_clip.eval.tasks import TaskError, load_task
from bmca_clip.eval.types import TASK_TYPES
from bmca_clip.eval.types.base import TaskType
from bmca_clip.eval.types.classification import build as build_classification
from bmca_clip.eval.weighted import hit_rate
from tests.helpers.eval_fixtures import make_color_task_data, tiny_clip, write_task_yaml

BODY = """\
type: nearest_neighbour
domain: synthetic
source:
  loader: csv
  path: colors
  file: test.csv
  image_column: image
  label_column: label
classes: [red, green, blue, yellow]
templates: ["a {} square."]
"""


def _check_metric(name: str, task: dict) -> None:
    if name != "nn_accuracy":
        raise KeyError(f"unknown nearest_neighbour metric '{name}'; allowed: nn_accuracy")


def _score(task, dataset, encoder, loader):
    """Leave-one-out nearest-neighbour accuracy of the image features: a probe that needs no text."""
    feats, labels = encoder.images(loader)
    similarity = (feats @ feats.T).fill_diagonal_(-torch.inf)
    hits = labels[similarity.argmax(dim=1)] == labels
    scores = Scores()
    scores.record("nn_accuracy", lambda: hit_rate(hits))
    return scores, 1.0 / len(task.classes)


# The whole new type: what a module under eval/types/ would declare (here reusing classification's builder).
NEAREST_NEIGHBOUR = TaskType(
    columns=("image_column", "label_column"),
    needs_prompts=True,
    encodings=("int", "string", "bool"),
    default_metrics=lambda task: ("nn_accuracy",),
    default_main_metric="nn_accuracy",
    check_metric=_check_metric,
    build=build_classification,
    score=_score,
)


def test_a_type_registered_in_one_line_loads_builds_and_scores_end_to_end(tmp_path, monkeypatch):
    make_color_task_data(tmp_path / "colors")  # 3 images of each of 4 solid colours
    path = write_task_yaml(tmp_path, "colour_neighbours", BODY)
    with pytest.raises(TaskError, match="key 'type': unknown value 'nearest_neighbour'"):
        load_task(path)

    monkeypatch.setitem(TASK_TYPES, "nearest_neighbour", NEAREST_NEIGHBOUR)  # the registry line
    task = load_task(path)
    assert (task.metrics, task.main_metric, task.source.label_encoding) == (
        ("nn_accuracy",),
        "nn_accuracy",
        "int",
    )
    model, preprocess, tokenizer = tiny_clip()
    (result,) = evaluate_suite([task], model, preprocess, tokenizer, "cpu", tmp_path, batch_size=5)
    assert result.status == "ok", result.error
    assert result.type == "nearest_neighbour" and result.n == 12 and result.chance == 0.25
    # Every image has two identical copies (cosine 1, the maximum), so each one's neighbour shares its colour.
    assert result.metrics == {"nn_accuracy": 1.0}

    bad = write_task_yaml(tmp_path, "bad", BODY + "metrics: [accuracy]\n")
    with pytest.raises(TaskError, match="unknown nearest_neighbour metric 'accuracy'; allowed: nn_accuracy"):
        load_task(bad)
