"""Metrics against values worked out by hand (comments show the arithmetic)."""

import itertools
import json

import pytest
import torch

from bmca_clip.eval.metrics import (
    UndefinedMetric,
    accuracy,
    auroc_binary,
    balanced_accuracy,
    compute_classification_metrics,
    macro_f1,
    top_k_accuracy,
)
from bmca_clip.eval.retrieval import chance_recall, parse_recall_metric, retrieval_recall

# Imbalanced: 6 of class 0, 3 of class 1, 1 of class 2.
LABELS = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
PREDS = torch.tensor([0, 0, 0, 0, 0, 1, 1, 0, 0, 0])


def test_balanced_accuracy_is_mean_per_class_recall_and_differs_from_accuracy():
    # recalls: class 0 5/6, class 1 1/3, class 2 0/1 -> (5/6 + 1/3 + 0) / 3 = 7/18
    assert balanced_accuracy(PREDS, LABELS) == pytest.approx(7 / 18)
    assert accuracy(PREDS, LABELS) == pytest.approx(6 / 10)


def test_balanced_accuracy_ignores_classes_absent_from_labels():
    # class 2 is predicted once but never a label: recalls are class 0 1/2 and class 1 1/1.
    assert balanced_accuracy(torch.tensor([0, 2, 1]), torch.tensor([0, 0, 1])) == pytest.approx(0.75)


def test_macro_f1_by_hand():
    # class 0: tp 5, fp 3, fn 1 -> 10/14; class 1: tp 1, fp 1, fn 2 -> 2/5; class 2: tp 0 -> 0
    assert macro_f1(PREDS, LABELS) == pytest.approx((10 / 14 + 2 / 5 + 0) / 3)


def test_top_k_accuracy():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert top_k_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(logits, labels, 3) == pytest.approx(1.0)
    with pytest.raises(UndefinedMetric, match="at least 4 classes"):
        top_k_accuracy(logits, labels, 4)


def test_auroc_with_ties_counts_half():
    scores = torch.tensor([0.1, 0.4, 0.4, 0.8, 0.4])
    labels = torch.tensor([0, 0, 1, 1, 1])
    # positives {0.4, 0.8, 0.4} vs negatives {0.1, 0.4}: (1 + .5) + (1 + 1) + (1 + .5) = 5 of 6 pairs
    assert auroc_binary(scores, labels) == pytest.approx(5 / 6)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    assert auroc_binary(scores, labels) == pytest.approx(sum(pairs) / len(pairs))


def test_one_class_auroc_is_none_with_a_reason_not_nan():
    with pytest.raises(UndefinedMetric, match="only class 0"):
        auroc_binary(torch.tensor([0.2, 0.7]), torch.tensor([0, 0]))
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.5]])
    scores = compute_classification_metrics(["accuracy", "auroc"], logits, torch.tensor([0, 0, 0]))
    assert scores.metrics["auroc"] is None
    assert "only class 0" in scores.notes["auroc"]
    assert scores.metrics["accuracy"] == pytest.approx(2 / 3)
    json.dumps(scores.metrics, allow_nan=False)


def test_nan_logits_give_none_not_nan():
    logits = torch.full((3, 2), float("nan"))
    scores = compute_classification_metrics(["accuracy", "auroc"], logits, torch.tensor([0, 1, 1]))
    assert scores.metrics == {"accuracy": None, "auroc": None}
    assert "NaN" in scores.notes["auroc"]


# Retrieval: 3 images, 5 captions; image 0 owns captions 0 and 1, image 1 owns 2, image 2 owns 3 and 4.
SIM = torch.tensor(
    [
        [0.1, 0.9, 0.3, 0.2, 0.0],  # image 0: its SECOND caption (0.9) is the nearest text
        [0.5, 0.1, 0.4, 0.6, 0.2],  # image 1: captions 0 and 3 beat its own (0.4) -> rank 3
        [0.3, 0.2, 0.1, 0.4, 0.7],  # image 2: its caption 4 is nearest
    ]
)
OWNER = torch.tensor([0, 0, 1, 2, 2])


def test_retrieval_recall_by_hand():
    r = retrieval_recall(SIM, OWNER, ks=(1, 3, 5))
    # image->text: image 0 hit at 1 (second caption), image 1 needs k=3, image 2 hit at 1
    assert r["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert r["image_to_text_R@3"] == pytest.approx(1.0)
    assert r["image_to_text_R@5"] == pytest.approx(1.0)
    # text->image, by column: caption 0 ranks its image 3rd, caption 3 ranks its image 2nd, others 1st
    assert r["text_to_image_R@1"] == pytest.approx(3 / 5)
    assert r["text_to_image_R@3"] == pytest.approx(1.0)
    # k=5 exceeds the 3-image gallery: undefined rather than a trivial 1
    assert r["text_to_image_R@5"] is None


def test_retrieval_ties_count_against_the_query():
    r = retrieval_recall(torch.ones(3, 5), OWNER, ks=(1,))
    assert r == {"image_to_text_R@1": 0.0, "text_to_image_R@1": 0.0}


def test_retrieval_rejects_an_image_without_captions():
    with pytest.raises(ValueError, match="no caption"):
        retrieval_recall(torch.rand(3, 2), torch.tensor([0, 1]), ks=(1,))


def test_chance_recall_by_hand():
    c = chance_recall(OWNER, 3, ks=(1,))
    # a random top-1 caption is one of an image's p captions with probability p/5: (2 + 1 + 2) / 15
    assert c["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert c["text_to_image_R@1"] == pytest.approx(1 / 3)


def test_recall_metric_names():
    assert parse_recall_metric("text_to_image_R@5") == ("text_to_image", 5)
    with pytest.raises(KeyError, match="image_to_text_R@<k>"):
        parse_recall_metric("image_retrieval_recall@5")
