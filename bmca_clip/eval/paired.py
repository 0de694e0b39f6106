"""Per-item inputs of a task's main metric, stored in its result JSON (`items`), so that results of
several checkpoints on the same items can be compared by a paired bootstrap (compare.py).

Only what the main metric needs is kept, per item in dataset order, each array zlib-compressed and
base64-encoded ({"dtype", "zlib_b64"}, plus "shape" for a 2-D array: ~1 byte per item for labels and
predictions):
    metric   the main metric's name
    n        number of items (queries for retrieval)
    unit     what the bootstrap draws: "item", "query" or "cluster (<what>)" (bootstrap.Clusters)
    draws    (k-shot only) the number of seeded draws whose mean the metric is: the per-draw arrays are
             [n, draws], one column per draw, and the metric is the mean of the draws' metrics
    arrays   labels + preds (accuracy, balanced_accuracy, macro_f1), labels + scores (auroc), or hits
             (top-k accuracy, retrieval recall@k, multiple choice: 1 where the item is a hit; + labels, the
             answers, for multiple choice's balanced accuracy); multilabel mAP: targets [n, K] (multi-hot)
             and ranks [n, K] (each class's scores as dense ranks: the order and ties AP depends on, ~2
             bytes per item and class); groups: each item's cluster id when the bootstrap resamples clusters
`metric_of(items)` gives the main metric as a function of weights, the very function of metrics.py /
weighted.py that made the point value and its interval.
"""

from __future__ import annotations

import base64
import statistics
import zlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from bmca_clip.eval import metrics as cls_metrics
from bmca_clip.eval.bootstrap import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Clusters, bootstrap_intervals
from bmca_clip.eval.weighted import hit_rate, macro_hit_rate, mean_average_precision

_PER_DRAW = ("preds", "scores", "hits")  # k-shot: the arrays a draw's classifier makes, [n, draws]
_BY_PREDICTION = {
    "accuracy": cls_metrics.accuracy,
    "balanced_accuracy": cls_metrics.balanced_accuracy,
    "macro_f1": cls_metrics.macro_f1,
}


def encode(values: Tensor) -> dict:
    """A tensor as {"dtype", "zlib_b64"} (+ "shape" when not 1-D): ints in the narrowest of
    int8/int16/int32, floats as float64."""
    array = values.detach().cpu().numpy()
    if array.dtype.kind in "biu":
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        dtype = next(
            t
            for t in ("int8", "int16", "int32", "int64")
            if np.iinfo(t).min <= low <= high <= np.iinfo(t).max
        )
    else:
        dtype = "float64"
    raw = np.ascontiguousarray(array.astype(dtype)).tobytes()
    stored = {"dtype": dtype, "zlib_b64": base64.b64encode(zlib.compress(raw, 9)).decode("ascii")}
    return stored if array.ndim == 1 else stored | {"shape": list(array.shape)}


def decode(stored: dict) -> Tensor:
    """The tensor encode() stored (int64 or float64)."""
    raw = zlib.decompress(base64.b64decode(stored["zlib_b64"]))
    array = np.frombuffer(raw, dtype=stored["dtype"]).reshape(stored.get("shape", -1))
    return torch.from_numpy(array.astype(np.float64 if array.dtype.kind == "f" else np.int64))


def _record(metric: str, n: int, arrays: dict[str, Tensor], clusters: Clusters | None, unit: str) -> dict:
    if clusters is not None:
        arrays, unit = {**arrays, "groups": clusters.ids}, clusters.unit
    return {"metric": metric, "n": n, "unit": unit, "arrays": {k: encode(v) for k, v in arrays.items()}}


def _prediction_arrays(metric: str, logits: Tensor, labels: Tensor) -> dict[str, Tensor] | None:
    """What a classification-style main metric needs of logits [n, K] (None: a metric not stored)."""
    logits, labels = logits.float().cpu(), labels.long().cpu()
    if metric in _BY_PREDICTION:
        return {"labels": labels, "preds": logits.argmax(dim=1)}
    if metric == "auroc" and logits.shape[1] == 2:
        return {"labels": labels, "scores": (logits[:, 1] - logits[:, 0]).double()}
    if (k := cls_metrics.top_k_of(metric)) is not None and k <= logits.shape[1]:
        return {"hits": cls_metrics.top_k_hits(logits, labels, k).long()}
    return None


def classification_items(
    metric: str, logits: Tensor, labels: Tensor, clusters: Clusters | None
) -> dict | None:
    """The items record of a classification-style main metric on logits [n, K] (None: a metric not stored)."""
    arrays = _prediction_arrays(metric, logits, labels)
    return None if arrays is None else _record(metric, len(labels), arrays, clusters, "item")


def draw_items(
    metric: str, logits_per_draw: list[Tensor], labels: Tensor, clusters: Clusters | None
) -> dict | None:
    """The items record of a mean over draws (k-shot): each draw's logits [n, K] of the same items; its
    per-draw arrays are [n, draws] (module docstring). None: a metric not stored."""
    per_draw = [_prediction_arrays(metric, logits, labels) for logits in logits_per_draw]
    if not per_draw or per_draw[0] is None:
        return None
    arrays = {
        name: torch.stack([d[name] for d in per_draw], dim=1) if name in _PER_DRAW else values
        for name, values in per_draw[0].items()
    }
    return _record(metric, len(labels), arrays, clusters, "item") | {"draws": len(per_draw)}


def multilabel_items(metric: str, scores: Tensor, targets: Tensor, clusters: Clusters | None) -> dict:
    """The items record of multilabel mAP: targets [n, K] and each class's scores [n, K] as dense ranks
    (equal scores, equal rank), which keep exactly the order and ties that average precision reads."""
    scores = scores.double().cpu()
    ranks = torch.stack([torch.unique(column, return_inverse=True)[1] for column in scores.T], dim=1)
    arrays = {"targets": targets.long().cpu(), "ranks": ranks.reshape(scores.shape)}
    return _record(metric, len(scores), arrays, clusters, "item")


def hit_items(metric: str, hits: Tensor, clusters: Clusters | None, unit: str = "query") -> dict:
    """The items record of a hit-rate main metric (recall@k, accuracy of multiple choice): hits [n]."""
    return _record(metric, len(hits), {"hits": hits.long().cpu()}, clusters, unit)


def choice_items(metric: str, hits: Tensor, answers: Tensor) -> dict | None:
    """The items record of multiple choice: hits [n], and each item's answer (group ids) for balanced accuracy."""
    if metric not in ("accuracy", "balanced_accuracy"):
        return None
    extra = {"labels": answers.long().cpu()} if metric == "balanced_accuracy" else {}
    return _record(metric, len(hits), {"hits": hits.long().cpu(), **extra}, None, "item")


def arrays_of(items: dict) -> dict[str, Tensor]:
    return {name: decode(stored) for name, stored in items["arrays"].items()}


def _mean(values: list):
    """The mean of the draws' values: floats (as k_shot.py's fmean, to the last bit), or tensors [r]."""
    return torch.stack(values).mean(dim=0) if isinstance(values[0], Tensor) else statistics.fmean(values)


def metric_of(items: dict, arrays: dict[str, Tensor]) -> Callable[[Tensor | None], object]:
    """The main metric of the stored items as a function of weights (weighted.py: None, [n] or [r, n])."""
    metric = items["metric"]
    if items.get("draws"):  # k-shot: the mean over draws of each draw's metric
        one = {**items, "draws": None}
        fns = [
            metric_of(one, {k: v[:, d] if k in _PER_DRAW else v for k, v in arrays.items()})
            for d in range(items["draws"])
        ]
        return lambda weights=None: _mean([fn(weights) for fn in fns])
    if "targets" in arrays:  # multilabel mAP
        ranks, targets = arrays["ranks"].double(), arrays["targets"].double()
        return lambda weights=None: mean_average_precision(ranks, targets, weights=weights)[0]
    if "hits" in arrays and "labels" in arrays:  # multiple choice's balanced accuracy: over the answers
        hits, answers = arrays["hits"].bool(), arrays["labels"]
        return lambda weights=None: macro_hit_rate(hits, answers, weights)
    if "hits" in arrays:
        hits = arrays["hits"].bool()
        return lambda weights=None: hit_rate(hits, weights)
    if "scores" in arrays:
        return lambda weights=None: cls_metrics.auroc_binary(arrays["scores"], arrays["labels"], weights)
    fn = _BY_PREDICTION[metric]
    return lambda weights=None: fn(arrays["preds"], arrays["labels"], weights)


def category_keys(arrays: dict[str, Tensor]) -> list[Tensor]:
    """Per-item key columns that decide the metric's value: items equal in all of them are interchangeable."""
    keys = [arrays[name] for name in ("labels", "preds", "hits", "targets", "ranks") if name in arrays]
    if "scores" in arrays:
        keys.append(torch.unique(arrays["scores"], return_inverse=True)[1])
    return [column for key in keys for column in (key.T if key.ndim == 2 else [key])]


def categories(keys: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(a representative item of each category, each item's category [n]) for key columns [n] each: items
    alike in all of them are interchangeable, so the bootstrap resamples categories (bootstrap.py)."""
    _, category = torch.unique(torch.stack(keys, dim=1), dim=0, return_inverse=True)
    n = len(category)
    reps = torch.full((int(category.max()) + 1,), n).scatter_reduce_(0, category, torch.arange(n), "amin")
    return reps, category


def interval(items: dict, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """The bootstrap.ci_record of the stored items' main metric: its percentile interval over resamples of
    the items (or their clusters), as every task's interval; for a metric that only exists as items
    (k-shot's mean over draws)."""
    arrays = arrays_of(items)
    reps, category = categories(category_keys(arrays))
    stat = metric_of(items, {k: v[reps] for k, v in arrays.items() if k != "groups"})
    name = items["metric"]
    return bootstrap_intervals(
        {name: stat}, category, items["unit"], n_resamples, seed, arrays.get("groups")
    )[name]
