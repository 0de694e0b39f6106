"""The multiple_choice and multilabel task types' scores, computed by hand on a few items."""

from __future__ import annotations

import pytest
import torch

from bmca_clip.eval.types.multilabel import multilabel_metrics
from bmca_clip.eval.types.multiple_choice import choose, multiple_choice_metrics, option_texts
from bmca_clip.eval.weighted import average_precision, mean_average_precision


def test_multiple_choice_scores_by_hand():
    questions = ["q", "q", "q", "r"]
    options = [["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"], ["x", "a"]]
    texts, index = option_texts(questions, options)
    assert texts == ["q a", "q b", "q c", "r x", "r a"] and index[3] == [3, 4]  # each text encoded once
    text_feats = torch.eye(5)
    image_feats = torch.tensor(
        [[0.9, 0.1, 0, 0, 0], [0, 0.2, 0.8, 0, 0], [0.5, 0.5, 0, 0, 0], [0, 0, 0, 0.1, 0.7]]
    )  # item 2 ties a and b: the earlier option wins
    preds = choose(image_feats, text_feats, index, chunk=3)
    assert preds.tolist() == [0, 2, 0, 1]
    answers = torch.tensor([0, 1, 0, 0])
    answer_texts = [o[a] for o, a in zip(options, answers.tolist(), strict=True)]
    scores = multiple_choice_metrics(["accuracy", "balanced_accuracy"], preds, answers, answer_texts)
    # correct: items 0 and 2; by answer: "a" 2/2, "b" 0/1, "x" 0/1
    assert scores.metrics == {"accuracy": pytest.approx(0.5), "balanced_accuracy": pytest.approx(1 / 3)}


def test_average_precision_and_map_by_hand():
    # ranked: pos, neg, pos, neg -> precision at the positives 1 and 2/3 -> AP (1 + 2/3) / 2
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([1, 0, 1, 0])) == pytest.approx(
        5 / 6
    )
    # tied scores are one threshold: pos and neg tied first -> precision 1/2 at recall 1
    assert average_precision(torch.tensor([0.5, 0.5, 0.1]), torch.tensor([1, 0, 0])) == pytest.approx(0.5)
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.7, 0.9, 0.1], [0.1, 0.2, 0.0]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    # class 0 ranks pos, neg, pos, neg: 5/6; class 1 ranks neg, pos, pos, neg: (1/2 + 2/3) / 2; c has no positive
    value, note = mean_average_precision(scores, targets, ["a", "b", "c"])
    ap_b = (1 / 2 + 2 / 3) / 2
    assert value == pytest.approx((5 / 6 + ap_b) / 2) and "['c']" in note
    result = multilabel_metrics(["mAP"], scores, torch.zeros_like(targets))
    assert result.metrics == {"mAP": None} and "no class has a positive" in result.notes["mAP"]
