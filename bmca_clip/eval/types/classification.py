"""Task type classification: zero-shot, each image scored against the prompt-ensemble weights of every class.

The class weights are the encoder's zero-shot classifier (encoders.py: open_clip's); logits are 100 x
the cosine similarity (CLIP's fixed scale: it changes no argmax or ranking); the metrics are metrics.py's,
each with a bootstrap CI over items, or over their clusters (source.group_column, or the crops of one
image).
Labels come from one of the label encodings (decode.py); a detection task scores one crop per box.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bmca_clip.errors import TaskError
from bmca_clip.eval import metrics as cls_metrics
from bmca_clip.eval.bootstrap import Clusters
from bmca_clip.eval.decode import LABEL_ENCODINGS
from bmca_clip.eval.encoders import Encoder
from bmca_clip.eval.items import ImageLabelDataset, bad_cells, item_clusters
from bmca_clip.eval.loaders.table import Table
from bmca_clip.eval.metrics import Scores, compute_classification_metrics
from bmca_clip.eval.paired import classification_items
from bmca_clip.eval.per_class import per_class_record
from bmca_clip.eval.spec import Task
from bmca_clip.eval.types.base import TaskType
from bmca_clip.eval.verify import check_class_names, check_labels, require_classes


def default_metrics(task: dict) -> tuple[str, ...]:
    """AUROC for binary tasks only, top-5 where 5 guesses are well below all classes (TASKS.md §4)."""
    return (
        *cls_metrics.DEFAULT_METRICS,
        *(("top5_accuracy",) if len(task["classes"]) >= 6 else ()),
        *(("auroc",) if len(task["classes"]) == 2 else ()),
    )


def check_metric(name: str, task: dict) -> None:
    cls_metrics.classification_metric(name)  # KeyError when unknown
    n_classes, k = len(task["classes"]), cls_metrics.top_k_of(name)
    if name == "auroc" and n_classes != 2:
        raise KeyError(f"'auroc' needs exactly 2 classes; this task has {n_classes}")
    if k is not None and k >= n_classes:
        raise KeyError(f"'{name}' needs more than {k} classes to mean anything; this task has {n_classes}")


def build(task: Task, table: Table, preprocess: Callable) -> Dataset:
    """Items (image or crop, class index), one per row or per kept box, labels decoded by the encoding."""
    column = task.source.label_column or "label"  # zip_split_json's table calls its labels "label"
    decode = LABEL_ENCODINGS[task.source.label_encoding](task)
    items, errors, dropped = [], [], Counter()  # items: (row, crop box or None, class index)
    cells = table.column(task, "label_column", default="label")
    require_classes(task, table, column, cells)
    notes = check_class_names(task, table, column)
    for i, cell in enumerate(cells):
        try:
            items += [(i, box, label) for box, label in decode(cell, dropped)]
        except ValueError as exc:
            errors.append(f"{table.row(i)}: {exc}")
    if errors:  # string labels: list every raw value, so one failed load says how to fix the map
        raise bad_cells(
            task, table, column, errors, held=cells if task.source.label_encoding == "string" else None
        )
    if not items:
        raise TaskError(
            f"task '{task.name}': {table.where} column '{column}': no item left; dropped {dict(dropped)}"
        )
    rows, boxes, labels = (list(values) for values in zip(*items, strict=True))
    check_labels(task, table, column, labels)
    images = table.image_column(task)
    cropped = any(b is not None for b in boxes)
    dataset = ImageLabelDataset(
        images.select(rows) if cropped else images, labels, preprocess, task.name, boxes if cropped else None
    )
    dataset.notes = notes
    dataset.clusters = item_clusters(task, table, rows) or (Clusters.of(rows, "image") if cropped else None)
    if dropped:
        dataset.notes["dropped"] = f"{sum(dropped.values())} boxes not scored: {dict(dropped)}"
    return dataset


def score(
    task: Task, dataset: ImageLabelDataset, encoder: Encoder, loader: DataLoader
) -> tuple[Scores, float]:
    """The task's metrics of zero-shot predictions, and chance 1/K."""
    classifier = encoder.classifier(task.classes, task.templates)
    feats, labels = encoder.images(loader)
    return scored(task, 100.0 * feats @ classifier.float().cpu(), labels.long(), dataset.clusters)


def scored(task: Task, logits: Tensor, labels: Tensor, clusters: Clusters | None) -> tuple[Scores, float]:
    """Everything a classifier's logits [n, K] give (zero-shot's or a linear probe's): the task's metrics
    with their CIs, per-class results, the main metric's per-item inputs; and chance 1/K."""
    scores = compute_classification_metrics(task.metrics, logits, labels, clusters=clusters)
    if torch.isfinite(logits).all():  # else every metric is None already, with the reason
        scores.per_class = per_class_record(logits.argmax(dim=1), labels, task.classes, clusters=clusters)
    if scores.metrics.get(task.main_metric) is not None:
        scores.items = classification_items(task.main_metric, logits, labels, clusters)
    return scores, 1.0 / len(task.classes)


CLASSIFICATION = TaskType(
    columns=("image_column", "label_column"),
    needs_prompts=True,
    encodings=("int", "string", "bool", "sequence_first", "split_json", "detection_crops"),
    default_metrics=default_metrics,
    default_main_metric="balanced_accuracy",
    check_metric=check_metric,
    build=build,
    score=score,
    grouped=True,
    classes_may_be_unknown=True,
)
