"""Task type multilabel: zero-shot, every class scored on every image by its prompt ensemble, then mAP.

A class's score for an image is the cosine similarity of the image to the class's averaged prompt
embedding (the same classifier as zero-shot classification). `mAP` is the mean, over the classes with at
least one positive image, of the average precision of ranking the images by that score; classes with no
positive are left out and named in the notes (their AP is undefined), so the value is never NaN.
Its 95% interval is the percentile bootstrap over the images (or their source.group_column clusters) that
every other type's metric gets, and the result stores the per-item inputs of mAP (paired.py: each class's
score ranks and the targets) for paired comparisons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bmca_clip.eval.bootstrap import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Clusters, bootstrap_intervals
from bmca_clip.eval.decode import LABEL_ENCODINGS
from bmca_clip.eval.encoders import Encoder
from bmca_clip.eval.items import ImageMultiLabelDataset, item_clusters
from bmca_clip.eval.loaders.table import Table
from bmca_clip.eval.metrics import NON_FINITE, Scores
from bmca_clip.eval.paired import multilabel_items
from bmca_clip.eval.spec import Task
from bmca_clip.eval.types.base import TaskType
from bmca_clip.eval.weighted import UndefinedMetric, average_precision, mean_average_precision

METRIC_NAMES = ("mAP",)
DEFAULT_METRICS = METRIC_NAMES


def check_metric(name: str) -> None:
    if name not in METRIC_NAMES:
        raise KeyError(f"unknown multilabel metric '{name}'; allowed: {', '.join(METRIC_NAMES)}")


def multilabel_metrics(
    names: Sequence[str],
    scores: Tensor,
    targets: Tensor,
    classes: Sequence[str] = (),
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    clusters: Clusters | None = None,
) -> Scores:
    """The named metrics (only mAP so far) of scores against targets, both [n, K], each defined one with
    its bootstrap CI (n_resamples=0: none) over the items, or over their clusters when given."""
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
    stats = {
        name: lambda counts: mean_average_precision(scores, targets, weights=counts)[0]
        for name in names
        if result.metrics[name] is not None
    }
    unit, groups = (clusters.unit, clusters.ids) if clusters is not None else ("item", None)
    result.ci = bootstrap_intervals(stats, torch.arange(len(scores)), unit, n_resamples, seed, groups)
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
    dataset = ImageMultiLabelDataset(table.image_column(task), masks, decode, preprocess, task.name)
    dataset.clusters = item_clusters(task, table, list(range(len(dataset))))
    return dataset


def score(task: Task, dataset: Dataset, encoder: Encoder, loader: DataLoader) -> tuple[Scores, float | None]:
    """mAP of the similarities [n, K] of each image to each class's prompt ensemble, and its chance."""
    classifier = encoder.classifier(task.classes, task.templates)
    feats, targets = encoder.images(loader)
    scores, targets = feats @ classifier.float().cpu(), targets.float()
    result = multilabel_metrics(task.metrics, scores, targets, task.classes, clusters=dataset.clusters)
    if torch.isfinite(scores).all():
        result.per_class = per_label_record(scores, targets, task.classes)
        if result.metrics[task.main_metric] is not None:
            result.items = multilabel_items(task.main_metric, scores, targets, dataset.clusters)
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
    grouped=True,
)
