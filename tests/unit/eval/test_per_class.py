"""Per-class results (eval/per_class.py) on cases worked out by hand: a 3-class and a binary task, with and
without sample weights; multiple choice per answer, multilabel per label; the confusion-matrix PNG; and
records written before per-class results existed still summarise and merge."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from bmca_clip.eval import merge
from bmca_clip.eval.per_class import confusion_matrix, per_class_record, rates
from bmca_clip.eval.per_class_plot import plot_confusion
from bmca_clip.eval.records import read_task_json, write_task_json
from bmca_clip.eval.report import result_from_record
from bmca_clip.eval.types.multilabel import per_label_record
from bmca_clip.eval.types.multiple_choice import NOT_AN_ANSWER, per_answer_record
from tests.helpers.numeric import assert_close_scaled

# 3 classes: true 0 -> predicted 0, 0, 1; true 1 -> 1, 1; true 2 -> 0, 2, 1.
LABELS_3 = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
PREDS_3 = torch.tensor([0, 0, 1, 1, 1, 0, 2, 1])
# Binary (0 benign, 1 malignant): 4 malignant, 3 found; 6 benign, 2 of them called malignant.
LABELS_2 = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PREDS_2 = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])


def _approx(values):
    return [None if v is None else pytest.approx(v) for v in values]


def test_three_classes_by_hand():
    record = per_class_record(PREDS_3, LABELS_3, ["a", "b", "c"], n_resamples=0)
    # rows = true class, columns = predicted class
    assert record["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 1, 1]]
    assert record["classes"] == ["a", "b", "c"] and record["support"] == [3, 2, 3]
    assert record["recall"] == _approx([2 / 3, 2 / 2, 1 / 3])  # diagonal / row sums
    assert record["precision"] == _approx([2 / 3, 2 / 4, 1 / 1])  # diagonal / column sums (3, 4, 1)
    assert "specificity" not in record and "recall_ci" not in record


def test_binary_sensitivity_specificity_precision_by_hand():
    record = per_class_record(PREDS_2, LABELS_2, ["benign", "malignant"], n_resamples=0)
    assert record["confusion_matrix"] == [[4, 2], [1, 3]]
    assert record["support"] == [6, 4]
    # malignant: sensitivity TP/(TP+FN) = 3/4, specificity TN/(TN+FP) = 4/6, PPV TP/(TP+FP) = 3/5
    assert record["recall"] == _approx([4 / 6, 3 / 4])
    assert record["specificity"] == _approx([3 / 4, 4 / 6])  # class k's = the other class's recall
    assert record["precision"] == _approx([4 / 5, 3 / 5])  # benign's NPV-as-PPV: 4 of the 5 called benign


def test_sample_weights_count_as_copies_and_bootstrap_rows_match_single_weightings():
    weights = torch.ones(10, dtype=torch.float64)
    weights[0] = 2.0  # a malignant item found: one more true positive
    assert confusion_matrix(PREDS_2, LABELS_2, 2, weights).tolist() == [[4, 2], [1, 4]]
    rows = torch.stack([torch.ones(10, dtype=torch.float64), weights, torch.zeros(10, dtype=torch.float64)])
    rows[2, :4] = 1.0  # only the malignant items
    stacked = confusion_matrix(PREDS_2, LABELS_2, 2, rows)
    assert stacked.shape == (3, 2, 2)
    assert stacked[0].tolist() == [[4, 2], [1, 3]] and stacked[1].tolist() == [[4, 2], [1, 4]]
    assert stacked[2].tolist() == [[0, 0], [1, 3]]


def test_absent_or_never_predicted_classes_are_null_not_nan():
    record = per_class_record(
        torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), ["x", "y", "z"], n_resamples=0
    )
    assert record["support"] == [1, 2, 0]
    assert record["recall"] == _approx([1.0, 0.5, None])  # z never present
    assert record["precision"] == _approx([0.5, 1.0, None])  # z never predicted
    json.dumps(record, allow_nan=False)


def test_intervals_hold_the_point_value_and_are_degenerate_for_a_perfect_class():
    preds, labels = PREDS_3.repeat(5), LABELS_3.repeat(5)
    record = per_class_record(preds, labels, ["a", "b", "c"], n_resamples=200, seed=1)
    assert record["ci"]["n_resamples"] == 200 and record["ci"]["unit"] == "item"
    assert record["recall_ci"][1] == [1.0, 1.0]  # class b is always found when drawn
    # A class drawn in under 95% of the resamples has no interval: 2 of 8 items miss in (6/8)^8 = 10%.
    few = per_class_record(PREDS_3, LABELS_3, ["a", "b", "c"], n_resamples=200, seed=1)
    assert few["recall_ci"][1] is None
    for name in ("recall", "precision"):
        for value, bounds in zip(record[name], record[f"{name}_ci"], strict=True):
            assert bounds is None or bounds[0] <= value <= bounds[1]
    again = per_class_record(preds, labels, ["a", "b", "c"], n_resamples=200, seed=1)
    assert again == record  # seeded


def test_multiple_choice_per_answer_with_a_column_for_options_that_are_no_answer():
    chosen = ["yes", "no", "yes", "maybe"]
    answers = ["yes", "yes", "no", "no"]
    record = per_answer_record(chosen, answers)
    assert record["classes"] == ["yes", "no"]
    assert record["predicted_columns"] == ["yes", "no", NOT_AN_ANSWER]
    assert record["confusion_matrix"] == [[1, 1, 0], [1, 0, 1]]
    assert record["recall"] == _approx([1 / 2, 0.0]) and record["precision"] == _approx([1 / 2, 0.0])
    assert "specificity" not in record  # three columns: not a binary task


def test_multilabel_per_label_average_precision_by_hand():
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.1], [0.1, 0.3]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    record = per_label_record(scores, targets, ["tumour", "stroma"])
    # tumour ranked pos, neg, pos: AP = 1/2 * 1/1 + 1/2 * 2/3
    assert record["classes"] == ["tumour", "stroma"] and record["support"] == [2, 0]
    assert record["average_precision"] == _approx([0.5 + 1 / 3, None])


def test_confusion_plot_is_a_png_and_skipped_without_a_matrix(tmp_path):
    record = per_class_record(PREDS_2, LABELS_2, ["benign", "malignant"], n_resamples=0)
    path = plot_confusion(record, "t (model)", tmp_path / "t.confusion.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100
    mc = per_answer_record(["yes", "maybe"], ["yes", "no"])
    assert plot_confusion(mc, "mc", tmp_path / "mc.png").is_file()
    assert (
        plot_confusion(
            {"classes": ["a"], "support": [1], "average_precision": [1.0]}, "x", tmp_path / "x.png"
        )
        is None
    )
    assert not (tmp_path / "x.png").exists()


def _old_record(folder, task, value):
    """A task JSON as written before per_class existed (metrics_version 2)."""
    from bmca_clip.eval.harness import TaskResult

    result = TaskResult(task, "classification", "pathology", "ok", "accuracy", {"accuracy": value}, n=10)
    path = write_task_json(result, folder, {"model": "m"}, None, "m")
    record = json.loads(path.read_text())
    del record["per_class"]
    path.write_text(json.dumps(record))
    return path


def test_records_without_per_class_still_read_summarise_and_merge(tmp_path):
    old = _old_record(tmp_path / "out" / "m", "old", 0.5)
    assert result_from_record(read_task_json(old)).per_class is None
    new = per_class_record(PREDS_2, LABELS_2, ["benign", "malignant"], n_resamples=0)
    path = _old_record(tmp_path / "out" / "m", "new", 0.7)
    path.write_text(json.dumps({**json.loads(path.read_text()), "per_class": new}))
    assert result_from_record(read_task_json(path)).per_class == new
    md, csv = merge.merge([tmp_path / "out"])
    assert "50.0" in md.read_text() and "70.0" in md.read_text() and csv.is_file()


def test_scores_match_a_float_reference_with_fractional_weights():
    weights = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    matrix = confusion_matrix(PREDS_3, LABELS_3, 3, weights)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for p, t, w in zip(PREDS_3.tolist(), LABELS_3.tolist(), weights.tolist(), strict=True):
        expected[t, p] += w
    assert_close_scaled(matrix, expected, rel=1e-12)


def test_equal_to_scikit_learn_with_sample_weights():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(3)
    labels, preds = torch.randint(0, 4, (300,), generator=g), torch.randint(0, 4, (300,), generator=g)
    preds[preds == 3] = 0  # class 3 never predicted: precision undefined (sklearn: zero_division=nan)
    weights = torch.rand(300, generator=g, dtype=torch.float64) * 3
    ours = confusion_matrix(preds, labels, 4, weights)
    theirs = sklearn_metrics.confusion_matrix(
        labels.numpy(), preds.numpy(), labels=range(4), sample_weight=weights
    )
    assert_close_scaled(ours, torch.from_numpy(theirs).double(), rel=1e-12)
    counts = per_class_record(preds, labels, list("abcd"), n_resamples=0)
    precision, recall, _, support = sklearn_metrics.precision_recall_fscore_support(
        labels.numpy(), preds.numpy(), labels=range(4), zero_division=float("nan")
    )
    assert counts["support"] == support.tolist()
    assert counts["recall"] == _approx(recall.tolist())
    assert counts["precision"][:3] == _approx(precision[:3].tolist()) and counts["precision"][3] is None
    precision, recall, _, _ = sklearn_metrics.precision_recall_fscore_support(
        labels.numpy(), preds.numpy(), labels=range(4), sample_weight=weights.numpy(), zero_division=0.0
    )
    weighted = rates(ours)
    assert_close_scaled(weighted["recall"], torch.from_numpy(recall), rel=1e-12)
    assert_close_scaled(weighted["precision"][:3], torch.from_numpy(precision[:3]), rel=1e-12)


class _Encoder:
    """A stand-in encoders.Encoder holding fixed features."""

    def __init__(self, image_feats, second, text_feats=None):
        self.image_feats, self.second, self.text_feats = image_feats, second, text_feats

    def images(self, loader):
        return self.image_feats, self.second

    def texts(self, texts):
        return self.text_feats

    def classifier(self, classes, templates):
        return torch.eye(len(classes))


def test_multiple_choice_and_multilabel_results_carry_per_class_through_their_types():
    from types import SimpleNamespace

    from bmca_clip.eval.types import TASK_TYPES

    mc_task = SimpleNamespace(metrics=("accuracy",), main_metric="accuracy")
    dataset = SimpleNamespace(questions=["q", "q"], options=[["yes", "no"], ["yes", "no"]], answers=[0, 1])
    # texts "q yes", "q no"; both images nearest "q yes": right for item 0, wrong for item 1
    encoder = _Encoder(torch.tensor([[1.0, 0.0], [0.9, 0.1]]), torch.arange(2), torch.eye(2))
    scores, _ = TASK_TYPES["multiple_choice"].score(mc_task, dataset, encoder, None)
    assert scores.per_class["classes"] == ["yes", "no"]
    assert scores.per_class["confusion_matrix"] == [[1, 0, 0], [1, 0, 0]]

    ml_task = SimpleNamespace(metrics=("mAP",), main_metric="mAP", classes=("tumour", "stroma"), templates=())
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    encoder = _Encoder(torch.tensor([[0.9, 0.2], [0.8, 0.1], [0.1, 0.3]]), targets)
    scores, _ = TASK_TYPES["multilabel"].score(ml_task, SimpleNamespace(clusters=None), encoder, None)
    # tumour ranked pos, neg, pos: 5/6; stroma's one positive (item 1, 0.1) ranks last of 3: 1/3
    assert scores.per_class["support"] == [2, 1]
    assert scores.per_class["average_precision"] == _approx([5 / 6, 1 / 3])
    assert scores.metrics["mAP"] == pytest.approx((5 / 6 + 1 / 3) / 2)
    assert scores.ci["mAP"]["low"] <= scores.metrics["mAP"] <= scores.ci["mAP"]["high"]
    assert scores.items["metric"] == "mAP" and scores.items["n"] == 3  # per-item inputs, for comparisons
