"""Per-item inputs of a task's main metric, stored in its result JSON (`items`), so that results of
several checkpoints on the same items can be compared by a paired bootstrap (compare.py).

Only what the main metric needs is kept, per item in dataset order, each array zlib-compressed and
base64-encoded ({"dtype", "zlib_b64"}: ~1 byte per item for labels and predictions):
    metric   the main metric's name
    n        number of items (queries for retrieval)
    unit     what the bootstrap draws: "item", "query" or "cluster (<what>)" (bootstrap.Clusters)
    arrays   labels + preds (accuracy, balanced_accuracy, macro_f1), labels + scores (auroc), or hits
             (top-k accuracy, retrieval recall@k, multiple choice: 1 where the item is a hit; + labels, the
             answers, for multiple choice's balanced accuracy); groups: each item's cluster
             id when the bootstrap resamples clusters
`metric_of(items)` gives the main metric as a function of weights, the very function of metrics.py /
weighted.py that made the point value and its interval.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from bmca_clip.eval import metrics as cls_metrics
from bmca_clip.eval.bootstrap import Clusters
from bmca_clip.eval.weighted import hit_rate, macro_hit_rate

_BY_PREDICTION = {
    "accuracy": cls_metrics.accuracy,
    "balanced_accuracy": cls_metrics.balanced_accuracy,
    "macro_f1": cls_metrics.macro_f1,
}


def encode(values: Tensor) -> dict:
    """A 1-D tensor as {"dtype", "zlib_b64"}: ints in the narrowest of int8/int16/int32, floats as float64."""
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
    return {"dtype": dtype, "zlib_b64": base64.b64encode(zlib.compress(raw, 9)).decode("ascii")}


def decode(stored: dict) -> Tensor:
    """The tensor encode() stored (int64 or float64)."""
    raw = zlib.decompress(base64.b64decode(stored["zlib_b64"]))
    array = np.frombuffer(raw, dtype=stored["dtype"])
    return torch.from_numpy(array.astype(np.float64 if array.dtype.kind == "f" else np.int64))


def _record(metric: str, n: int, arrays: dict[str, Tensor], clusters: Clusters | None, unit: str) -> dict:
    if clusters is not None:
        arrays, unit = {**arrays, "groups": clusters.ids}, clusters.unit
    return {"metric": metric, "n": n, "unit": unit, "arrays": {k: encode(v) for k, v in arrays.items()}}


def classification_items(
    metric: str, logits: Tensor, labels: Tensor, clusters: Clusters | None
) -> dict | None:
    """The items record of a classification-style main metric on logits [n, K] (None: a metric not stored)."""
    logits, labels = logits.float().cpu(), labels.long().cpu()
    if metric in _BY_PREDICTION:
        arrays = {"labels": labels, "preds": logits.argmax(dim=1)}
    elif metric == "auroc" and logits.shape[1] == 2:
        arrays = {"labels": labels, "scores": (logits[:, 1] - logits[:, 0]).double()}
    elif (k := cls_metrics.top_k_of(metric)) is not None and k <= logits.shape[1]:
        arrays = {"hits": cls_metrics.top_k_hits(logits, labels, k).long()}
    else:
        return None
    return _record(metric, len(labels), arrays, clusters, "item")


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


def metric_of(items: dict, arrays: dict[str, Tensor]) -> Callable[[Tensor | None], object]:
    """The main metric of the stored items as a function of weights (weighted.py: None, [n] or [r, n])."""
    metric = items["metric"]
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
    keys = [arrays[name] for name in ("labels", "preds", "hits") if name in arrays]
    if "scores" in arrays:
        keys.append(torch.unique(arrays["scores"], return_inverse=True)[1])
    return keys
