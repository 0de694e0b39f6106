"""Weighted statistics: the convention every metric follows, and the statistics several share.

A metric is one function of (predictions or scores, labels, weights), `weights` saying how much each
item counts:
- None: unit weights, the plain metric, returned as a float;
- [n]: one weighting (scikit-learn's sample_weight), a float;
- [r, n]: r weightings at once, float64 values [r], NaN where undefined. The bootstrap passes its
  resample counts here (bootstrap.py), so an interval and the point value it surrounds come from the
  same code; a cluster bootstrap's counts are per item already (cluster_counts).
A float that is undefined (zero weight in all, one class only for AUROC) raises `UndefinedMetric` with
the reason. An item of weight 0 is absent: a class whose items all weigh 0 drops out, as it does from a
resample that did not draw it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class UndefinedMetric(ValueError):
    """The metric has no meaningful value for these labels; the message says why."""


def weight_rows(x: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """weights as rows [r, n] for items x [n, ...] with labels [n]; None gives one row of ones (float64:
    its sums stay exact integers at any n). ValueError when the shapes do not align; UndefinedMetric
    when a single weighting has no weight at all."""
    if labels.ndim != 1 or x.shape[0] != labels.shape[0]:
        raise ValueError(f"predictions {tuple(x.shape)} and labels {tuple(labels.shape)} do not align")
    if weights is None:
        rows = torch.ones(1, len(labels), dtype=torch.float64)
    elif weights.ndim in (1, 2) and weights.shape[-1] == len(labels):
        rows = weights.reshape(-1, len(labels))
        rows = rows if rows.is_floating_point() else rows.double()
    else:
        raise ValueError(f"weights {tuple(weights.shape)} must be [n] or [r, n] for the {len(labels)} items")
    if (weights is None or weights.ndim == 1) and not bool((rows > 0).any()):
        raise UndefinedMetric("no samples")
    return rows


def per_weighting(values: Tensor, weights: Tensor | None, why: Callable[[], str] = lambda: "no samples"):
    """values [r] as the caller's weights ask: the tensor for rows [r, n], else the one value as a
    float, UndefinedMetric(why()) when it is NaN."""
    if weights is not None and weights.ndim == 2:
        return values
    value = values.item()
    if math.isnan(value):
        raise UndefinedMetric(why())
    return value


def sums(rows: Tensor, cells: Tensor, n_cells: int) -> Tensor:
    """Per row, the weight of each cell's items [r, n_cells] (cells [n]: each item's cell index), in the
    rows' dtype. A metric makes all the sums it needs in this one pass, e.g. cells = label * 2 + hit."""
    # Float32 resample counts sum exactly below 2**24 items, at half float64's memory traffic.
    return rows.new_zeros(len(rows), n_cells).index_add_(1, cells, rows)


def hit_rate(hits: Tensor, weights: Tensor | None = None):
    """The weighted share of items that are hits (bool [n]): accuracy, top-k accuracy, recall@k."""
    rows = weight_rows(hits, hits, weights)
    # Float32 resample counts sum exactly below 2**24 items; the ratio is taken in float64.
    values = (rows @ hits.to(rows.dtype)).double() / rows.sum(dim=1).double()
    return per_weighting(values, weights)


def macro_hit_rate(hits: Tensor, groups: Tensor, weights: Tensor | None = None):
    """The unweighted mean over groups (ints [n]) of each group's weighted share of hits (bool [n]);
    a group of weight 0 drops out. Balanced accuracy, with the labels as groups."""
    rows = weight_rows(hits, groups, weights)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    by_hit = sums(rows, groups * 2 + hits.long(), 2 * n_groups).view(len(rows), n_groups, 2).double()
    support, correct = by_hit.sum(dim=2), by_hit[:, :, 1]
    present = support > 0
    rate = torch.where(present, correct / torch.where(present, support, 1.0), 0.0)
    return per_weighting(rate.sum(dim=1) / present.sum(dim=1), weights)


def average_precision(scores: Tensor, targets: Tensor, weights: Tensor | None = None):
    """AP of ranking by scores (higher first) for binary targets: sum over thresholds of
    (recall gain) x precision, tied scores forming one threshold (scikit-learn's definition, its
    sample_weight as weights; weighted.py's convention: a float, or values [r] for weights [r, n])."""
    scores, targets = scores.double().flatten(), targets.double().flatten()
    rows = weight_rows(scores, targets, weights)
    order = torch.argsort(scores, descending=True, stable=True)
    scores, targets, rows = scores[order], targets[order], rows[:, order]
    ends = torch.cat([torch.nonzero(scores[1:] != scores[:-1]).flatten(), torch.tensor([len(scores) - 1])])
    tp = (rows * targets).cumsum(dim=1)[:, ends].double()
    seen = rows.cumsum(dim=1)[:, ends].double()  # a threshold that adds no weight adds no recall
    precision = torch.where(seen > 0, tp / torch.where(seen > 0, seen, 1.0), 0.0)
    recall = tp / tp[:, -1:]  # 0 / 0 = NaN: no positive image
    gain = torch.diff(recall, dim=1, prepend=torch.zeros(len(rows), 1, dtype=recall.dtype))
    return per_weighting((gain * precision).sum(dim=1), weights, lambda: "no positive image")


def mean_average_precision(
    scores: Tensor, targets: Tensor, classes: Sequence[str] = (), weights: Tensor | None = None
) -> tuple[float | Tensor, str | None]:
    """mAP over the classes with a positive in targets [n, K], and a note naming the classes left out.
    With weights [r, n], the mAP of each weighting [r] over the classes with positive weight in it
    (NaN where there is none); the note names the classes with no positive in targets."""
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(
            f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be [n, K]"
        )
    names = list(classes) or [str(k) for k in range(targets.shape[1])]
    present = [k for k in range(targets.shape[1]) if targets[:, k].sum() > 0]
    if not present:
        raise UndefinedMetric("no class has a positive image")
    rows = weight_rows(scores, targets[:, 0], weights)
    per_class = torch.stack([average_precision(scores[:, k], targets[:, k], rows) for k in present])
    defined = ~per_class.isnan()
    value = torch.where(defined, per_class, 0.0).sum(dim=0) / defined.sum(dim=0)
    absent = [names[k] for k in range(targets.shape[1]) if k not in present]
    note = f"mean over {len(present)} classes; no positive image, left out: {absent}" if absent else None
    return per_weighting(value, weights, lambda: "no class has a positive image"), note
