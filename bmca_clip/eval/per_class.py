"""Per-class results of a task: the confusion matrix and each class's recall, precision and support.

What clinicians read beside a headline metric: per class, recall (sensitivity: the share of that class's
items predicted as it), precision (positive predictive value: the share of the items predicted as the
class that are it), support (its items), and for a binary task specificity, which for class k is the
recall of the other class (the share of the other class's items not predicted as k). Each is a weighted
statistic (weighted.py's convention: weights None, [n] as scikit-learn's sample_weight, or [r, n]
bootstrap counts), so the point values and their intervals come from the same code and equal
scikit-learn's confusion_matrix / precision_recall_fscore_support with the same weights. Rates are None
where their denominator has no weight (a class never present: recall; never predicted: precision),
never NaN. Intervals are the task's own bootstrap (bootstrap.py: same resamples, items or clusters).

The JSON object (report.py's `per_class`):
    classes           [str]       class names (or answers) in label order
    support           [number]    items of each class (weighted sums; counts without weights)
    recall, precision [float | null]
    specificity       [float | null]  binary tasks only
    recall_ci, precision_ci, specificity_ci  [[low, high] | null]  95% percentile bootstrap, null where
                      undefined (a class absent from over 5% of the resamples)
    ci                {level, method, unit, n_resamples, seed} of those intervals
    confusion_matrix  [[number]]  rows = true class, columns = predicted class, both in `classes` order
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bmca_clip.eval.bootstrap import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Clusters, bootstrap_intervals
from bmca_clip.eval.weighted import sums, weight_rows


def confusion_matrix(preds: Tensor, labels: Tensor, n_classes: int, weights: Tensor | None = None) -> Tensor:
    """The weight of each (true, predicted) pair, float64 [K, K] (rows true, columns predicted), or
    [r, K, K] for weights [r, n]; predictions may reach one column past the labels' classes when the
    caller passes that n_classes (multiple choice: "not an answer")."""
    rows = weight_rows(preds, labels, weights)
    flat = sums(rows, labels.long() * n_classes + preds.long(), n_classes * n_classes)
    matrix = flat.double().view(len(rows), n_classes, n_classes)
    return matrix if weights is not None and weights.ndim == 2 else matrix[0]


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, NaN where the denominator is 0."""
    return torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1.0), torch.nan)


def rates(confusion: Tensor, n_true: int | None = None) -> dict[str, Tensor]:
    """recall, precision (and specificity when there are 2 classes) of each of the first n_true classes
    (default all rows) from a confusion matrix [..., K, K']; NaN where undefined."""
    k = n_true or confusion.shape[-2]
    tp = confusion.diagonal(dim1=-2, dim2=-1)[..., :k]
    out = {
        "recall": _ratio(tp, confusion.sum(dim=-1)[..., :k]),
        "precision": _ratio(tp, confusion.sum(dim=-2)[..., :k]),
    }
    if k == 2 and confusion.shape[-1] == 2:
        out["specificity"] = out["recall"].flip(-1)  # class k's true negatives are the other class's hits
    return out


def _plain(values: Tensor) -> list:
    """JSON numbers: NaN -> None, integral weights -> int."""
    return [None if v != v else int(v) if float(v).is_integer() else float(v) for v in values.tolist()]


def per_class_record(
    preds: Tensor,
    labels: Tensor,
    classes: Sequence[str],
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    clusters: Clusters | None = None,
    extra_column: str | None = None,
) -> dict:
    """The JSON object of the module docstring for predicted and true class indices [n]; with
    extra_column, a prediction of len(classes) is a column of that name (never a true class)."""
    preds, labels = preds.long().cpu(), labels.long().cpu()
    k = len(classes)
    width = k + (extra_column is not None)
    confusion = confusion_matrix(preds, labels, width)
    point = rates(confusion, k)
    record = {"classes": list(classes), "support": _plain(confusion.sum(dim=1)[:k])}
    record |= {name: _plain(values) for name, values in point.items()}
    if n_resamples > 0:
        _, category = torch.unique(labels * width + preds, return_inverse=True)
        reps = torch.full((int(category.max()) + 1,), len(labels)).scatter_reduce_(
            0, category, torch.arange(len(labels)), "amin"
        )
        stats = _statistics(preds[reps], labels[reps], width, k, list(point))
        unit, groups = (clusters.unit, clusters.ids) if clusters is not None else ("item", None)
        intervals = bootstrap_intervals(stats, category, unit, n_resamples, seed, groups)
        for name in point:
            bounds = [intervals[f"{name}/{c}"] for c in range(k)]
            record[f"{name}_ci"] = [None if b["low"] is None else [b["low"], b["high"]] for b in bounds]
        first = intervals[f"recall/{0}"]
        record["ci"] = {key: first[key] for key in ("level", "method", "unit", "n_resamples", "seed")}
    record["confusion_matrix"] = [_plain(row) for row in confusion[:k]]
    if extra_column is not None:
        record["predicted_columns"] = [*classes, extra_column]
    return record


def _statistics(preds: Tensor, labels: Tensor, width: int, k: int, names: list[str]) -> dict:
    """Bootstrap statistics "<rate>/<class>": counts [r, n] of the items (preds, labels) -> that rate of
    that class [r]. bootstrap_intervals calls them all on each chunk of counts in turn, so the rates of
    a chunk are computed once and shared."""
    last: dict = {}

    def statistic(name: str, c: int):
        def stat(counts: Tensor) -> Tensor:
            if last.get("counts") is not counts:
                last["counts"], last["rates"] = (
                    counts,
                    rates(confusion_matrix(preds, labels, width, counts), k),
                )
            return last["rates"][name][:, c]

        return stat

    return {f"{name}/{c}": statistic(name, c) for name in names for c in range(k)}
