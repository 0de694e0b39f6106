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
    bootstrap_ci,
    classification_metric,
    compute_classification_metrics,
    macro_f1,
    top_k_accuracy,
    weighted_metric,
)
from bmca_clip.eval.types.retrieval import (
    DEFAULT_METRICS,
    chance_recall,
    parse_recall_metric,
    recall_hits,
    recall_intervals,
    retrieval_recall,
)

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


# Bootstrap confidence intervals.


def _random_task(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, k)
    logits[:, 0] = logits[:, 0].round()  # some tied scores, for AUROC
    return logits, labels


def test_bootstrap_ci_is_reproducible_and_covers_the_point_estimate():
    # 150 of 200 right: accuracy 0.75, whose sampling sd is sqrt(.75 * .25 / 200) = 0.0306, so the
    # percentile interval is about 0.75 -+ 1.96 * 0.0306 = [0.690, 0.810].
    labels = torch.zeros(200, dtype=torch.long)
    logits = torch.zeros(200, 2)
    logits[150:, 1] = 1.0
    low, high = bootstrap_ci("accuracy", logits, labels, n_resamples=1000, seed=0)
    assert low < 0.75 < high
    assert low == pytest.approx(0.690, abs=0.015) and high == pytest.approx(0.810, abs=0.015)
    assert bootstrap_ci("accuracy", logits, labels, n_resamples=1000, seed=0) == (low, high)
    assert bootstrap_ci("accuracy", logits, labels, n_resamples=1000, seed=1) != (low, high)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_weighted_forms_equal_the_metric_on_each_resample(k):
    """The vectorised statistic, given a resample's counts, is the plain metric of those items."""
    logits, labels = _random_task(120, k, seed=k)
    names = ["accuracy", "balanced_accuracy", "macro_f1", "top2_accuracy"] + (["auroc"] if k == 2 else [])
    g = torch.Generator().manual_seed(0)
    draws = [torch.randint(120, (120,), generator=g) for _ in range(4)]
    counts = torch.stack([torch.bincount(d, minlength=120) for d in draws]).float()
    for name in names:
        values = weighted_metric(name, logits, labels)(counts)
        plain = [classification_metric(name)(logits[d], labels[d]) for d in draws]
        assert values.tolist() == pytest.approx(plain, abs=1e-6), name
        assert weighted_metric(name, logits, labels)(torch.ones(1, 120)).item() == pytest.approx(
            classification_metric(name)(logits, labels), abs=1e-6
        )


def test_vectorised_and_per_resample_intervals_agree():
    logits, labels = _random_task(300, 5, seed=3)
    fast = bootstrap_ci("balanced_accuracy", logits, labels, n_resamples=1000)
    slow = bootstrap_ci(lambda x, y: balanced_accuracy(x.argmax(1), y), logits, labels, n_resamples=200)
    # Different draws of the same distribution: equal up to Monte Carlo error.
    assert fast == pytest.approx(slow, abs=0.02)


def test_every_defined_metric_gets_an_interval_and_a_rare_class_gets_a_reason():
    logits, labels = _random_task(400, 2, seed=5)
    scores = compute_classification_metrics(
        ["accuracy", "balanced_accuracy", "macro_f1", "auroc"], logits, labels
    )
    for name, value in scores.metrics.items():
        ci = scores.ci[name]
        assert ci["low"] <= value <= ci["high"] and ci["reason"] is None
        assert (ci["method"], ci["n_resamples"], ci["seed"], ci["level"]) == (
            "percentile bootstrap",
            1000,
            0,
            0.95,
        )
    # One positive in 100: a third of the resamples draw no positive, where AUROC is undefined.
    labels = torch.zeros(100, dtype=torch.long)
    labels[0] = 1
    scores = compute_classification_metrics(["accuracy", "auroc"], torch.randn(100, 2), labels)
    assert scores.metrics["auroc"] is not None
    assert scores.ci["auroc"]["low"] is None and "bootstrap resamples" in scores.ci["auroc"]["reason"]
    assert scores.ci["accuracy"]["low"] is not None
    json.dumps(scores.ci, allow_nan=False)


def test_an_undefined_metric_gets_no_interval():
    scores = compute_classification_metrics(["accuracy", "auroc"], torch.randn(3, 2), torch.tensor([0, 0, 0]))
    assert scores.metrics["auroc"] is None and "auroc" not in scores.ci


def test_retrieval_intervals_resample_queries():
    hits = recall_hits(SIM, OWNER, ks=(1, 3, 5))
    assert hits["text_to_image_R@1"].tolist() == [False, True, True, False, True]
    assert hits["text_to_image_R@5"] is None
    ci = recall_intervals(hits, n_resamples=500)
    # 5 caption queries, 3 hits: a resample's recall is a multiple of 1/5 between 0 and 1.
    assert ci["text_to_image_R@1"]["unit"] == "query"
    assert 0 <= ci["text_to_image_R@1"]["low"] < 3 / 5 < ci["text_to_image_R@1"]["high"] <= 1
    assert ci["image_to_text_R@3"]["low"] == ci["image_to_text_R@3"]["high"] == 1.0  # every image found
    assert "text_to_image_R@5" not in ci


def test_retrieval_defaults_include_r_at_100():
    assert "image_to_text_R@100" in DEFAULT_METRICS and "text_to_image_R@100" in DEFAULT_METRICS
