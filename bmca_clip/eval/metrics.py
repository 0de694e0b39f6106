"""Classification metrics, each ONE weighted statistic of (predictions or logits, labels, weights).

Every metric follows weighted.py's convention: without weights it is the plain metric (a float,
`UndefinedMetric` with the reason when undefined); with resample counts [r, n] it is the metric of each
resample, which is how the bootstrap scores its resamples. `compute_classification_metrics` turns an
undefined metric into a value of None plus a note, so a result never holds NaN. Each metric equals
scikit-learn's, with and without sample_weight, tied scores and classes missing from the labels
included (tests/unit/eval/test_sklearn.py, tests/unit/eval/test_weighted.py; the decisions are in each
docstring). Values are fractions in [0, 1]; report tables convert them to percent.

Confidence intervals (bootstrap.py): `bootstrap_ci` and `compute_classification_metrics` give a seeded
percentile-bootstrap interval (95%, 1000 resamples of the test items drawn with replacement, or of their
clusters when given). Items that every metric treats alike (same label, prediction, top-k hits, score)
are resampled as one category weighted by its count, so 1000 resamples of 50k items take about a
second; any other callable works too, called once per resample. Resamples where a metric is undefined
(AUROC drawing one class only) are skipped; if more than 5% are, the interval is undefined.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    percentile_interval,
)
from bmca_clip.eval.weighted import (
    UndefinedMetric,
    hit_rate,
    macro_hit_rate,
    per_weighting,
    sums,
    weight_rows,
)

NON_FINITE = "scores contain NaN or inf (diverged weights, or fp16 overflow: try fp32)"


# Part of every stored result's config_hash: bump it whenever a metric's or an interval's definition
# changes, so results computed the old way are scored again instead of being reused (eval/run.py).
# 2: retrieval ranks ties as CLIP_benchmark does; top-k breaks ties as scikit-learn; cluster bootstrap.
# 3: per-class results (per_class.py) in every classification, multilabel and multiple-choice result.
# 4: multilabel mAP and the k-shot main metric get intervals; multilabel, linear-probe and k-shot results
#    store their per-item inputs (paired.py) for paired comparisons.
METRICS_VERSION = 4


@dataclass
class Scores:
    """Metric values by name (None when undefined) and, for each None, the reason."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    ci: dict[str, dict] = field(default_factory=dict)  # metric -> ci_record(...), for defined metrics
    per_class: dict | None = None  # per_class.py's record (report.py schema); None for retrieval
    items: dict | None = None  # the main metric's per-item inputs (paired.py), for paired comparisons

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


# ---- The metrics ------------------------------------------------------------------------------------


def accuracy(preds: Tensor, labels: Tensor, weights: Tensor | None = None):
    """Fraction of predictions equal to the label."""
    weight_rows(preds, labels, weights)  # the shapes checked before preds == labels broadcasts
    return hit_rate(preds == labels, weights)


def balanced_accuracy(preds: Tensor, labels: Tensor, weights: Tensor | None = None):
    """Macro mean of per-class recall over the classes present in labels (chance level 1/K)."""
    weight_rows(preds, labels, weights)  # the shapes checked before preds == labels broadcasts
    return macro_hit_rate(preds == labels, labels, weights)


def macro_f1(preds: Tensor, labels: Tensor, weights: Tensor | None = None):
    """Unweighted mean F1 over classes seen in labels or predictions (scikit-learn's default set).

    Restricting to seen classes means tp + fp + fn > 0 for each, so no 0/0 ever arises.
    """
    rows = weight_rows(preds, labels, weights)
    k = int(max(labels.max(), preds.max())) + 1 if len(labels) else 0
    confusion = sums(rows, labels * k + preds, k * k).view(len(rows), k, k).double()  # [r, true, predicted]
    tp = confusion.diagonal(dim1=1, dim2=2)
    denom = confusion.sum(dim=1) + confusion.sum(dim=2)  # (tp + fp) + (tp + fn)
    seen = denom > 0
    f1 = torch.where(seen, 2 * tp / torch.where(seen, denom, 1.0), 0.0)
    return per_weighting(f1.sum(dim=1) / seen.sum(dim=1), weights)


def top_k_hits(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """Per sample, whether its label is among the k highest of its logits [n, K].

    Tied logits rank the higher class index first, scikit-learn's documented rule
    (top_k_accuracy_score), rather than torch.topk's order, which is unspecified for ties. So top-1
    can differ from `accuracy` (argmax: the lowest index wins a tie) only where the top logits tie.
    """
    own = logits.gather(1, labels[:, None])
    later = torch.arange(logits.shape[1]) > labels[:, None]
    return ((logits > own) | ((logits == own) & later)).sum(dim=1) < k


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int, weights: Tensor | None = None):
    """Fraction of samples whose label is among the k highest logits (ties: top_k_hits)."""
    weight_rows(logits, labels, weights)  # the shapes checked, and "no samples", before the class count
    if k > logits.shape[1]:
        raise UndefinedMetric(f"top-{k} accuracy needs at least {k} classes, got {logits.shape[1]}")
    return hit_rate(top_k_hits(logits, labels, k), weights)


def auroc_binary(scores: Tensor, labels: Tensor, weights: Tensor | None = None):
    """Area under the ROC curve for labels in {0, 1}, scores higher for class 1.

    The Mann-Whitney U: the weighted share of (positive, negative) pairs that the positive wins, a tie
    of scores counting one half (scikit-learn's trapezoid ROC). Undefined when only one class has weight.
    """
    rows = weight_rows(scores, labels, weights)
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(f"auroc_binary needs labels in {{0, 1}}, got {sorted(set(labels.tolist()))}")
    _, group = torch.unique(scores.double(), return_inverse=True)
    n_groups = int(group.max()) + 1
    # Per tie group of scores, the weight of positives p and of negatives q; a positive beats the
    # negatives of lower groups and ties with those of its own.
    by_label = sums(rows, labels * n_groups + group, 2 * n_groups).view(len(rows), 2, n_groups)
    p, q = by_label[:, 1], by_label[:, 0]
    below = q.cumsum(dim=1) - q / 2  # exact in float32 for counts (half-integers); products need float64
    wins = (p.double() * below.double()).sum(dim=1)
    values = wins / (p.sum(dim=1).double() * q.sum(dim=1).double())  # 0 / 0 = NaN: one class only

    def why() -> str:
        only = 1 if bool((rows[0][labels == 1] > 0).any()) else 0
        return f"AUROC undefined: only class {only} is present in the labels"

    return per_weighting(values, weights, why)


def _auroc_from_logits(logits: Tensor, labels: Tensor, weights: Tensor | None = None):
    if logits.shape[1] != 2:
        raise UndefinedMetric(f"auroc is for binary tasks; this one has {logits.shape[1]} classes")
    # softmax(logits)[:, 1] == sigmoid(l1 - l0): the difference ranks samples identically.
    return auroc_binary(logits[:, 1] - logits[:, 0], labels, weights)


# Each entry maps (logits [n, K], labels [n], weights) to the metric. top<k>_accuracy is parsed from its name.
_FIXED_METRICS: dict[str, Callable[..., float | Tensor]] = {
    "accuracy": lambda logits, labels, weights=None: accuracy(logits.argmax(dim=1), labels, weights),
    "balanced_accuracy": lambda logits, labels, weights=None: balanced_accuracy(
        logits.argmax(dim=1), labels, weights
    ),
    "macro_f1": lambda logits, labels, weights=None: macro_f1(logits.argmax(dim=1), labels, weights),
    "auroc": _auroc_from_logits,
}
_TOP_K = re.compile(r"top([1-9][0-9]*)_accuracy")
CLASSIFICATION_METRIC_NAMES = (*_FIXED_METRICS, "top<k>_accuracy")
DEFAULT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def classification_metric(name: str) -> Callable[..., float | Tensor]:
    """The metric called `name`, a function of (logits, labels, weights=None); KeyError listing the
    allowed names when there is none."""
    if name in _FIXED_METRICS:
        return _FIXED_METRICS[name]
    k = top_k_of(name)
    if k is not None:
        return lambda logits, labels, weights=None: top_k_accuracy(logits, labels, k, weights)
    raise KeyError(
        f"unknown classification metric '{name}'; allowed: {', '.join(CLASSIFICATION_METRIC_NAMES)}"
    )


def top_k_of(name: str) -> int | None:
    """k for a top<k>_accuracy name, else None (tasks.py uses it to check k against the class count)."""
    match = _TOP_K.fullmatch(name)
    return int(match[1]) if match else None


def weighted_metric(name: str, logits: Tensor, labels: Tensor) -> Statistic:
    """Classification metric `name` of (logits, labels) as a bootstrap statistic: counts [r, n] of each
    item -> the metric of each resample [r]; all-ones counts give the plain metric."""
    metric = classification_metric(name)
    return lambda counts: metric(logits, labels, counts)


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
    metrics: items with the same label, prediction, top-k hits and AUROC score, which every metric
    weighs alike, so the metric of the items under any weights is that of the representatives under
    the weights summed per category (tests/unit/eval/test_weighted.py)."""
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
    weight_rows(logits, labels)  # ValueError when they do not align, UndefinedMetric when empty
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
