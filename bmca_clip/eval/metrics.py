"""Classification metrics: pure functions of predictions (or logits) and integer labels.

Conventions shared by every metric here and in retrieval.py:
- values are fractions in [0, 1]; report tables convert them to percent;
- a metric that is undefined for the data (AUROC with one class present, anything on zero samples)
  raises `UndefinedMetric` carrying the reason. `compute_classification_metrics` turns that into a
  value of None plus a note, so a result never holds NaN;
- each equals scikit-learn's metric on the same input, tied scores and classes missing from the test
  labels included (tests/test_eval_sklearn.py; the decisions are in each docstring).

Confidence intervals (bootstrap.py): `bootstrap_ci` gives a seeded percentile-bootstrap interval (95%,
1000 resamples of the test items drawn with replacement, or of their clusters when given). Every metric
here also has a weighted form that scores all resamples of a chunk at once from a count matrix
[resamples, categories of items], so 1000 resamples of 50k items take about a second; any other callable
works too, called once per resample. Resamples where a metric is undefined (AUROC drawing one class
only) are skipped; if more than 5% are, the interval is undefined.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from bmca_clip.eval.bootstrap import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CI_LEVEL,
    Clusters,
    Statistic,
    bootstrap_intervals,
    cluster_counts,
    mean_statistic,
    percentile_interval,
)

NON_FINITE = "scores contain NaN or inf (diverged weights, or fp16 overflow: try fp32)"


# Part of every stored result's config_hash: bump it whenever a metric's or an interval's definition
# changes, so results computed the old way are scored again instead of being reused (eval/run.py).
# 2: retrieval ranks ties as CLIP_benchmark does; top-k breaks ties as scikit-learn; cluster bootstrap.
METRICS_VERSION = 2


class UndefinedMetric(ValueError):
    """The metric has no meaningful value for these labels; the message says why."""


@dataclass
class Scores:
    """Metric values by name (None when undefined) and, for each None, the reason."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    ci: dict[str, dict] = field(default_factory=dict)  # metric -> ci_record(...), for defined metrics

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


def top_k_hits(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """Per sample, whether its label is among the k highest of its logits [n, K].

    Tied logits rank the higher class index first, scikit-learn's documented rule
    (top_k_accuracy_score), rather than torch.topk's order, which is unspecified for ties. So top-1
    can differ from `accuracy` (argmax: the lowest index wins a tie) only where the top logits tie.
    """
    own = logits.gather(1, labels[:, None])
    later = torch.arange(logits.shape[1]) > labels[:, None]
    return ((logits > own) | ((logits == own) & later)).sum(dim=1) < k


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of samples whose label is among the k highest logits (ties: top_k_hits)."""
    _check(logits, labels)
    if k > logits.shape[1]:
        raise UndefinedMetric(f"top-{k} accuracy needs at least {k} classes, got {logits.shape[1]}")
    return top_k_hits(logits, labels, k).double().mean().item()


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


def compute_classification_metrics(
    names: Sequence[str],
    logits: Tensor,
    labels: Tensor,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    clusters: Clusters | None = None,
) -> Scores:
    """Every named metric on logits [n, K] and labels [n], with a bootstrap CI for each defined one
    (n_resamples=0: none) over resampled items, or over resampled clusters when given; undefined
    metrics become None with a note."""
    logits, labels = logits.float().cpu(), labels.long().cpu()
    if not torch.isfinite(logits).all():
        return Scores.undefined(names, NON_FINITE)
    scores = Scores()
    for name in names:
        fn = classification_metric(name)
        scores.record(name, lambda fn=fn: fn(logits, labels))
    defined = [name for name in names if scores.metrics[name] is not None]
    if defined and n_resamples > 0:
        reps, category = _categories(defined, logits, labels)
        # A defined point value means the weighted form is defined too (same checks): no raise here.
        stats = {name: weighted_metric(name, logits[reps], labels[reps]) for name in defined}
        unit, groups = (clusters.unit, clusters.ids) if clusters is not None else ("item", None)
        scores.ci = bootstrap_intervals(stats, category, unit, n_resamples, seed, groups)
    return scores


def _categories(names: Sequence[str], logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(a representative item of each category, each item's category) for the named classification
    metrics."""
    keys = [labels, logits.argmax(dim=1)]
    keys += [top_k_hits(logits, labels, k) for k in map(top_k_of, names) if k]
    if "auroc" in names:
        keys.append(torch.unique((logits[:, 1] - logits[:, 0]).double(), return_inverse=True)[1])
    rows = torch.stack([key.long() for key in keys], dim=1)
    _, category = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(category.max()) + 1,), len(labels)).scatter_reduce_(
        0, category, torch.arange(len(labels)), "amin"
    )
    return first, category


def bootstrap_ci(
    metric: str | Callable[[Tensor, Tensor], float],
    logits: Tensor,
    labels: Tensor,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = CI_LEVEL,
    groups: Tensor | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap interval (low, high) of a metric over resamples of the items, or of their
    clusters when groups (cluster ids [n], see group_ids) are given.

    metric is a classification metric name, scored on logits [n, K] by its vectorised weighted form,
    or any callable f(x, labels) -> float on predictions or logits x [n, ...], called once per resample
    on the drawn items (slower). The same seed gives the same interval; bootstrap.UndefinedInterval
    when the metric is undefined in too many resamples.
    """
    _check(logits, labels)
    if isinstance(metric, str):
        reps, category = _categories([metric], logits.float(), labels.long())
        stat = weighted_metric(metric, logits.float()[reps], labels.long()[reps])
    else:
        stat, category = per_resample(metric, logits, labels), torch.arange(len(labels))
    draws = cluster_counts(category, None if groups is None else groups.long(), n_resamples, seed)
    values = torch.cat([stat(counts) for counts in draws])
    return percentile_interval(values, level)


def per_resample(fn: Callable[[Tensor, Tensor], float], x: Tensor, labels: Tensor) -> Statistic:
    """The statistic that calls fn on each resample's items, one category per item (UndefinedMetric ->
    NaN)."""
    items = torch.arange(len(labels))

    def stat(counts: Tensor) -> Tensor:
        values = []
        for row in counts.long():
            drawn = items.repeat_interleave(row)
            try:
                values.append(fn(x[drawn], labels[drawn]))
            except UndefinedMetric:
                values.append(math.nan)
        return torch.tensor(values, dtype=torch.float64)

    return stat


def _confusion(preds: Tensor, labels: Tensor, counts: Tensor, n_classes: int) -> Tensor:
    """Resampled confusion matrices [r, true class, predicted class]."""
    cells = labels * n_classes + preds
    flat = counts.new_zeros(counts.shape[0], n_classes * n_classes).index_add_(1, cells, counts)
    return flat.view(-1, n_classes, n_classes).double()  # exact integer counts; small, so float64


def _balanced_accuracy_stat(logits: Tensor, labels: Tensor) -> Statistic:
    preds, k = logits.argmax(dim=1), max(logits.shape[1], int(labels.max()) + 1)

    def stat(counts: Tensor) -> Tensor:
        confusion = _confusion(preds, labels, counts, k)
        support, correct = confusion.sum(dim=2), confusion.diagonal(dim1=1, dim2=2)
        present = support > 0  # as balanced_accuracy: classes absent from this resample's labels drop out
        recall = torch.where(present, correct / torch.where(present, support, 1.0), 0.0)
        return recall.sum(dim=1) / present.sum(dim=1)

    return stat


def _macro_f1_stat(logits: Tensor, labels: Tensor) -> Statistic:
    preds, k = logits.argmax(dim=1), max(logits.shape[1], int(labels.max()) + 1)

    def stat(counts: Tensor) -> Tensor:
        confusion = _confusion(preds, labels, counts, k)
        tp = confusion.diagonal(dim1=1, dim2=2)
        denom = confusion.sum(dim=1) + confusion.sum(dim=2)  # (tp + fp) + (tp + fn)
        seen = denom > 0  # as macro_f1: classes seen in this resample's labels or predictions
        f1 = torch.where(seen, 2 * tp / torch.where(seen, denom, 1.0), 0.0)
        return f1.sum(dim=1) / seen.sum(dim=1)

    return stat


def _auroc_stat(logits: Tensor, labels: Tensor) -> Statistic:
    if logits.shape[1] != 2:
        raise UndefinedMetric(f"auroc is for binary tasks; this one has {logits.shape[1]} classes")
    _, group = torch.unique((logits[:, 1] - logits[:, 0]).double(), return_inverse=True)
    n_groups, pos, neg = int(group.max()) + 1, torch.where(labels == 1)[0], torch.where(labels != 1)[0]

    def stat(counts: Tensor) -> Tensor:
        # Per tie group of scores, drawn positives p and negatives q. A positive beats the negatives of
        # lower groups and ties (one half) with those of its own: the Mann-Whitney U of auroc_binary.
        p = counts.new_zeros(len(counts), n_groups).index_add_(1, group[pos], counts.index_select(1, pos))
        q = counts.new_zeros(len(counts), n_groups).index_add_(1, group[neg], counts.index_select(1, neg))
        below = q.cumsum(dim=1) - q / 2  # exact in float32 (half-integers); products need float64
        wins = (p.double() * below.double()).sum(dim=1)
        return wins / (p.sum(dim=1).double() * q.sum(dim=1).double())  # 0 / 0 = NaN: one class only

    return stat


def _top_k_stat(logits: Tensor, labels: Tensor, k: int) -> Statistic:
    if k > logits.shape[1]:
        raise UndefinedMetric(f"top-{k} accuracy needs at least {k} classes, got {logits.shape[1]}")
    return mean_statistic(top_k_hits(logits, labels, k))


_WEIGHTED: dict[str, Callable[[Tensor, Tensor], Statistic]] = {
    "accuracy": lambda logits, labels: mean_statistic(logits.argmax(dim=1) == labels),
    "balanced_accuracy": _balanced_accuracy_stat,
    "macro_f1": _macro_f1_stat,
    "auroc": _auroc_stat,
}


def weighted_metric(name: str, logits: Tensor, labels: Tensor) -> Statistic:
    """The vectorised bootstrap statistic of classification metric `name`: counts [r, n] of each item
    of (logits, labels) -> the metric of each resample [r]; all-ones counts give the plain metric."""
    classification_metric(name)  # KeyError naming the allowed metrics
    k = top_k_of(name)
    return _top_k_stat(logits, labels, k) if k is not None else _WEIGHTED[name](logits, labels)
