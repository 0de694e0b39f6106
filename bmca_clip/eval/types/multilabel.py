"""Task type multilabel: zero-shot, every class scored on every image by its prompt ensemble, then mAP.

A class's score for an image is the cosine similarity of the image to the class's averaged prompt
embedding (the same classifier as zero-shot classification). `mAP` is the mean, over the classes with at
least one positive image, of the average precision of ranking the images by that score; classes with no
positive are left out and named in the notes (their AP is undefined), so the value is never NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bmca_clip.eval.decode import LABEL_ENCODINGS
from bmca_clip.eval.encoders import Encoder
from bmca_clip.eval.items import ImageMultiLabelDataset
from bmca_clip.eval.loaders.table import Table
from bmca_clip.eval.metrics import NON_FINITE, Scores
from bmca_clip.eval.spec import Task
from bmca_clip.eval.types.base import TaskType
from bmca_clip.eval.weighted import UndefinedMetric, per_weighting, weight_rows

METRIC_NAMES = ("mAP",)
DEFAULT_METRICS = METRIC_NAMES


def check_metric(name: str) -> None:
    if name not in METRIC_NAMES:
        raise KeyError(f"unknown multilabel metric '{name}'; allowed: {', '.join(METRIC_NAMES)}")


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


def multilabel_metrics(
    names: Sequence[str], scores: Tensor, targets: Tensor, classes: Sequence[str] = ()
) -> Scores:
    """The named metrics (only mAP so far) of scores against targets, both [n, K]."""
    scores, targets = scores.double().cpu(), targets.double().cpu()
    if not torch.isfinite(scores).all():
        return Scores.undefined(names, NON_FINITE)
    result = Scores()
    for name in names:
        check_metric(name)
        try:
            value, note = mean_average_precision(scores, targets, classes)
        except UndefinedMetric as exc:
            value, note = None, str(exc)
        result.record(name, lambda value=value: value)
        if note:
            result.notes[name] = note
    return result


def per_label_record(scores: Tensor, targets: Tensor, classes: Sequence[str]) -> dict:
    """Per label: support (images where it is present) and average precision (None: no positive), the
    terms of mAP. No recall or precision: zero-shot similarities have no threshold to make them."""
    scores, targets = scores.double().cpu(), targets.double().cpu()
    support = targets.sum(dim=0)
    ap = [
        average_precision(scores[:, k], targets[:, k]) if support[k] > 0 else None
        for k in range(len(classes))
    ]
    return {"classes": list(classes), "support": [int(s) for s in support.tolist()], "average_precision": ap}


def chance_map(targets: Tensor) -> float | None:
    """About the mAP of a random ranking: the mean prevalence of the classes that have a positive."""
    prevalence = targets.double().mean(dim=0)
    present = prevalence[prevalence > 0]
    return present.mean().item() if len(present) else None


def build(task: Task, table: Table, preprocess: Callable) -> Dataset:
    """Items (image, multi-hot targets), the targets decoded from the label column's masks when read."""
    masks = table.image_column(task, "label_column")
    decode = LABEL_ENCODINGS[task.source.label_encoding](task)
    return ImageMultiLabelDataset(table.image_column(task), masks, decode, preprocess, task.name)


def score(task: Task, dataset: Dataset, encoder: Encoder, loader: DataLoader) -> tuple[Scores, float | None]:
    """mAP of the similarities [n, K] of each image to each class's prompt ensemble, and its chance."""
    classifier = encoder.classifier(task.classes, task.templates)
    feats, targets = encoder.images(loader)
    scores, targets = feats @ classifier.float().cpu(), targets.float()
    result = multilabel_metrics(task.metrics, scores, targets, task.classes)
    if torch.isfinite(scores).all():
        result.per_class = per_label_record(scores, targets, task.classes)
    return result, chance_map(targets)


MULTILABEL = TaskType(
    columns=("image_column", "label_column"),
    needs_prompts=True,
    encodings=("mask_presence",),
    default_metrics=lambda task: DEFAULT_METRICS,
    default_main_metric="mAP",
    check_metric=lambda name, task: check_metric(name),
    build=build,
    score=score,
)
