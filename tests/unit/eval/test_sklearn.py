"""Every classification metric (and multilabel mAP) against scikit-learn, on many seeded random cases:
tied scores, classes missing from the test labels, binary AUROC, and the bootstrap's weighted forms
against scikit-learn's sample_weight (a resample is the items weighted by how often they were drawn).

Where a class is missing, scikit-learn's defaults are the reference and our choice:
- balanced accuracy averages recall over the classes present in the labels (a class only predicted
  adds no recall term; scikit-learn warns and drops it too);
- macro F1 averages over the classes seen in labels or predictions (a class only predicted scores 0;
  one never seen is left out), as f1_score(average="macro") with its default labels;
- top-k accuracy ranks all K classes of the task (top_k_accuracy_score with labels=range(K)); tied
  scores are ranked higher class index first, as scikit-learn documents;
- AUROC with one class present is undefined (scikit-learn raises; we give None with a reason);
- mAP leaves out classes with no positive image and names them in a note (scikit-learn warns and
  scores such a class 0, which would pull the mean down for a class the test set cannot test).
"""

import warnings

import numpy as np
import pytest
import torch

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from bmca_clip.eval.metrics import (  # noqa: E402  (after the importorskip)
    UndefinedMetric,
    accuracy,
    auroc_binary,
    balanced_accuracy,
    classification_metric,
    macro_f1,
    top_k_accuracy,
    weighted_metric,
)
from bmca_clip.eval.weighted import average_precision, mean_average_precision  # noqa: E402

CASES = 60  # random cases per metric


def _case(seed: int, tied: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, K], labels [n]) of a random size and class count; with tied=True the logits take few
    distinct values (many ties), and some of the K classes may be missing from the labels."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(5, 80)), int(rng.integers(3, 9))
    present = rng.choice(k, size=int(rng.integers(2, k + 1)), replace=False)  # some classes missing
    labels = rng.choice(present, size=n)
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[labels]
    if tied:
        logits = np.round(logits * rng.choice([1, 2])) / 2  # coarse values: ties within and across rows
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" and the like
        return fn(*args, **kwargs)


def _close(ours: float, theirs: float) -> None:
    assert ours == pytest.approx(float(theirs), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(CASES))
def test_label_metrics_equal_sklearn(seed):
    logits, labels = _case(seed)
    preds = logits.argmax(dim=1)
    y, p = labels.numpy(), preds.numpy()
    _close(accuracy(preds, labels), sklearn_metrics.accuracy_score(y, p))
    _close(balanced_accuracy(preds, labels), _quiet(sklearn_metrics.balanced_accuracy_score, y, p))
    _close(macro_f1(preds, labels), _quiet(sklearn_metrics.f1_score, y, p, average="macro"))


@pytest.mark.parametrize("seed", range(CASES))
def test_top_k_accuracy_equals_sklearn_with_ties(seed):
    logits, labels = _case(seed)
    n_classes = logits.shape[1]
    for k in range(1, n_classes):
        theirs = sklearn_metrics.top_k_accuracy_score(
            labels.numpy(), logits.numpy(), k=k, labels=np.arange(n_classes)
        )
        _close(top_k_accuracy(logits, labels, k), theirs)


@pytest.mark.parametrize("seed", range(CASES))
def test_binary_auroc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 120))
    labels = rng.integers(0, 2, size=n)
    labels[:2] = [0, 1]  # both classes present
    scores = rng.normal(size=n) + labels
    if seed % 2:
        scores = np.round(scores)  # heavy ties, within and across the classes
    _close(
        auroc_binary(torch.tensor(scores), torch.tensor(labels)),
        sklearn_metrics.roc_auc_score(labels, scores),
    )
    # The registry's `auroc` scores from 2-class logits; scikit-learn from the softmax probability.
    logits = torch.tensor(np.stack([np.zeros(n), scores], axis=1))
    probability = torch.softmax(logits.double(), dim=1)[:, 1].numpy()
    _close(
        classification_metric("auroc")(logits, torch.tensor(labels)),
        sklearn_metrics.roc_auc_score(labels, probability),
    )


def test_auroc_with_one_class_is_undefined_as_in_sklearn():
    labels, scores = np.zeros(6, dtype=int), np.arange(6.0)
    with pytest.raises(UndefinedMetric, match="only class 0"):
        auroc_binary(torch.tensor(scores), torch.tensor(labels))
    # Older scikit-learn raised ValueError; 1.9 returns NaN with a warning. Undefined either way.
    try:
        theirs = _quiet(sklearn_metrics.roc_auc_score, labels, scores)
    except ValueError as exc:
        assert "one class" in str(exc)
    else:
        assert np.isnan(theirs)


@pytest.mark.parametrize("seed", range(CASES // 2))
def test_weighted_forms_equal_sklearn_with_sample_weight(seed):
    """The bootstrap scores a resample from counts; scikit-learn's sample_weight means the same."""
    logits, labels = _case(seed)
    n, n_classes = logits.shape
    weights = np.random.default_rng(seed).multinomial(n, np.ones(n) / n, size=3).astype(np.float32)
    counts = torch.tensor(weights)
    y, p = labels.numpy(), logits.argmax(dim=1).numpy()
    keep = [w > 0 for w in weights]  # scikit-learn counts a class of weight 0 as present; a resample does not
    expected = {
        "accuracy": [sklearn_metrics.accuracy_score(y, p, sample_weight=w) for w in weights],
        "balanced_accuracy": [
            _quiet(sklearn_metrics.balanced_accuracy_score, y[m], p[m], sample_weight=w[m])
            for w, m in zip(weights, keep, strict=True)
        ],
        "macro_f1": [
            _quiet(sklearn_metrics.f1_score, y[m], p[m], average="macro", sample_weight=w[m])
            for w, m in zip(weights, keep, strict=True)
        ],
        "top2_accuracy": [
            sklearn_metrics.top_k_accuracy_score(
                y, logits.numpy(), k=2, labels=np.arange(n_classes), sample_weight=w
            )
            for w in weights
        ],
    }
    for name, values in expected.items():
        ours = weighted_metric(name, logits, labels)(counts).tolist()
        assert ours == pytest.approx(values, rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("seed", range(CASES // 2))
def test_weighted_auroc_equals_sklearn_with_sample_weight(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 80))
    labels = rng.integers(0, 2, size=n)
    labels[:2] = [0, 1]
    logits = torch.tensor(np.stack([np.zeros(n), np.round(rng.normal(size=n) + labels, 1)], axis=1))
    weights = rng.multinomial(n, np.ones(n) / n, size=4).astype(np.float32)
    ours = weighted_metric("auroc", logits, torch.tensor(labels))(torch.tensor(weights)).tolist()
    for value, w in zip(ours, weights, strict=True):
        drawn = w > 0
        if len(set(labels[drawn])) < 2:
            assert np.isnan(value)  # undefined in that resample, as scikit-learn would refuse
            continue
        _close(value, sklearn_metrics.roc_auc_score(labels, logits[:, 1].numpy(), sample_weight=w))


@pytest.mark.parametrize("seed", range(CASES))
def test_average_precision_and_map_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(3, 60)), int(rng.integers(1, 6))
    targets = (rng.random((n, k)) < rng.random(k)).astype(float)
    scores = np.round(rng.normal(size=(n, k)) + targets, int(rng.integers(0, 3)))  # ties at coarse rounding
    present = [c for c in range(k) if targets[:, c].any()]
    for c in present:
        _close(
            average_precision(torch.tensor(scores[:, c]), torch.tensor(targets[:, c])),
            sklearn_metrics.average_precision_score(targets[:, c], scores[:, c]),
        )
    if not present:
        with pytest.raises(UndefinedMetric):
            mean_average_precision(torch.tensor(scores), torch.tensor(targets))
        return
    value, note = mean_average_precision(torch.tensor(scores), torch.tensor(targets))
    theirs = sklearn_metrics.average_precision_score(targets[:, present], scores[:, present], average="macro")
    _close(value, theirs)
    assert (note is None) == (len(present) == k)
