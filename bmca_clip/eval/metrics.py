"""Classification metrics: pure functions of predictions (or logits) and integer labels.

Conventions shared by every metric here and in retrieval.py:
- values are fractions in [0, 1]; report tables convert them to percent;
- a metric that is undefined for the data (AUROC with one class present, anything on zero samples)
  raises `UndefinedMetric` carrying the reason. `compute_classification_metrics` turns that into a
  value of None plus a note, so a result never holds NaN.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

NON_FINITE = "scores contain NaN or inf (diverged weights, or fp16 overflow: try fp32)"


class UndefinedMetric(ValueError):
    """The metric has no meaningful value for these labels; the message says why."""


@dataclass
class Scores:
    """Metric values by name (None when undefined) and, for each None, the reason."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def undefined(cls, names: Sequence[str], reason: str) -> Scores:
        """Every named metric None, for the same reason."""
        return cls(dict.fromkeys(names), dict.fromkeys(names, reason))

    def record(self, name: str, compute: Callable[[], float | None]) -> None:
        """Store compute()'s value under name, or None with a note when it is undefined or not finite."""
        try:
            value = compute()
        except UndefinedMetric as exc:
            value, note = None, str(exc)
        else:
            note = None
            if value is not None and not math.isfinite(value):
                value, note = None, f"non-finite value {value}: {NON_FINITE}"
        self.metrics[name] = value
        if note is not None:
            self.notes[name] = note


def _check(preds: Tensor, labels: Tensor) -> None:
    if labels.ndim != 1 or preds.shape[0] != labels.shape[0]:
        raise ValueError(f"predictions {tuple(preds.shape)} and labels {tuple(labels.shape)} do not align")
    if labels.numel() == 0:
        raise UndefinedMetric("no samples")


def accuracy(preds: Tensor, labels: Tensor) -> float:
    """Fraction of predictions equal to the label."""
    _check(preds, labels)
    return (preds == labels).double().mean().item()


def balanced_accuracy(preds: Tensor, labels: Tensor) -> float:
    """Macro mean of per-class recall over the classes present in labels (chance level 1/K)."""
    _check(preds, labels)
    n_classes = int(max(labels.max().item(), preds.max().item())) + 1
    support = torch.bincount(labels, minlength=n_classes).double()
    correct = torch.bincount(labels[preds == labels], minlength=n_classes).double()
    present = support > 0
    return (correct[present] / support[present]).mean().item()


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of samples whose label is among the k highest logits."""
    _check(logits, labels)
    if k > logits.shape[1]:
        raise UndefinedMetric(f"top-{k} accuracy needs at least {k} classes, got {logits.shape[1]}")
    topk = logits.topk(k, dim=1).indices
    return (topk == labels[:, None]).any(dim=1).double().mean().item()


def macro_f1(preds: Tensor, labels: Tensor) -> float:
    """Unweighted mean F1 over classes seen in labels or predictions (scikit-learn's default set).

    Restricting to seen classes means tp + fp + fn > 0 for each, so no 0/0 ever arises.
    """
    _check(preds, labels)
    classes = torch.unique(torch.cat([labels, preds]))
    f1 = []
    for c in classes:
        tp = ((preds == c) & (labels == c)).sum().item()
        fp = ((preds == c) & (labels != c)).sum().item()
        fn = ((preds != c) & (labels == c)).sum().item()
        f1.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1) / len(f1)


def auroc_binary(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve for labels in {0, 1}, scores higher for class 1.

    Computed from ranks (Mann-Whitney U) with tied scores given their average rank, so a tie between a
    positive and a negative counts one half. Raises UndefinedMetric when only one class is present.
    """
    _check(scores, labels)
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(f"auroc_binary needs labels in {{0, 1}}, got {sorted(set(labels.tolist()))}")
    n_pos = int(labels.sum().item())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        only = 1 if n_neg == 0 else 0
        raise UndefinedMetric(f"AUROC undefined: only class {only} is present in the labels")
    _, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
    rank_sum_pos = avg_rank[inverse][labels == 1].sum().item()
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _auroc_from_logits(logits: Tensor, labels: Tensor) -> float:
    if logits.shape[1] != 2:
        raise UndefinedMetric(f"auroc is for binary tasks; this one has {logits.shape[1]} classes")
    # softmax(logits)[:, 1] == sigmoid(l1 - l0): the difference ranks samples identically.
    return auroc_binary(logits[:, 1] - logits[:, 0], labels)


# Each entry maps (logits [n, K], labels [n]) to a float. top<k>_accuracy is parsed from its name.
_FIXED_METRICS: dict[str, Callable[[Tensor, Tensor], float]] = {
    "accuracy": lambda logits, labels: accuracy(logits.argmax(dim=1), labels),
    "balanced_accuracy": lambda logits, labels: balanced_accuracy(logits.argmax(dim=1), labels),
    "macro_f1": lambda logits, labels: macro_f1(logits.argmax(dim=1), labels),
    "auroc": _auroc_from_logits,
}
_TOP_K = re.compile(r"top([1-9][0-9]*)_accuracy")
CLASSIFICATION_METRIC_NAMES = (*_FIXED_METRICS, "top<k>_accuracy")
DEFAULT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def classification_metric(name: str) -> Callable[[Tensor, Tensor], float]:
    """The metric function called `name`; KeyError listing the allowed names when there is none."""
    if name in _FIXED_METRICS:
        return _FIXED_METRICS[name]
    match = _TOP_K.fullmatch(name)
    if match:
        return partial(top_k_accuracy, k=int(match[1]))
    raise KeyError(
        f"unknown classification metric '{name}'; allowed: {', '.join(CLASSIFICATION_METRIC_NAMES)}"
    )


def top_k_of(name: str) -> int | None:
    """k for a top<k>_accuracy name, else None (tasks.py uses it to check k against the class count)."""
    match = _TOP_K.fullmatch(name)
    return int(match[1]) if match else None


def compute_classification_metrics(names: Sequence[str], logits: Tensor, labels: Tensor) -> Scores:
    """Every named metric on logits [n, K] and labels [n]; undefined ones become None with a note."""
    logits, labels = logits.float().cpu(), labels.long().cpu()
    if not torch.isfinite(logits).all():
        return Scores.undefined(names, NON_FINITE)
    scores = Scores()
    for name in names:
        fn = classification_metric(name)
        scores.record(name, lambda fn=fn: fn(logits, labels))
    return scores
