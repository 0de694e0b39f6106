"""Multilabel zero-shot scoring: every class scored on every image by its prompt ensemble, then mAP.

A class's score for an image is the cosine similarity of the image to the class's averaged prompt
embedding (the same classifier as zero-shot classification). `mAP` is the mean, over the classes with at
least one positive image, of the average precision of ranking the images by that score; classes with no
positive are left out and named in the notes (their AP is undefined), so the value is never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from bmca_clip.eval.metrics import NON_FINITE, Scores
from bmca_clip.eval.weighted import UndefinedMetric, per_weighting, weight_rows
from bmca_clip.eval.zeroshot import encode_images

METRIC_NAMES = ("mAP",)
DEFAULT_METRICS = METRIC_NAMES


def check_metric(name: str) -> None:
    if name not in METRIC_NAMES:
        raise KeyError(f"unknown multilabel metric '{name}'; allowed: {', '.join(METRIC_NAMES)}")


class MaskPresence:
    """A segmentation mask -> multi-hot over classes: class c is present when any pixel holds one of the
    mask values that label_map maps to it. Keys are "#rrggbb" colours (compared in RGB) or integer
    indices (read from the mask's first band: grey masks saved as RGB have three equal bands)."""

    def __init__(self, label_map: Mapping[str, str], classes: Sequence[str]):
        index = {name: i for i, name in enumerate(classes)}
        self.n_classes = len(classes)
        self.colours = all(k.startswith("#") for k in label_map)
        self.values = {(int(k[1:], 16) if self.colours else int(k)): index[c] for k, c in label_map.items()}

    def __repr__(self) -> str:  # part of a dataset's fingerprint
        return (
            f"MaskPresence(colours={self.colours}, values={sorted(self.values.items())}, n={self.n_classes})"
        )

    def __call__(self, mask: Image.Image) -> Tensor:
        if self.colours:
            rgb = np.asarray(mask.convert("RGB"), dtype=np.int64)
            values = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
        else:
            values = np.asarray(mask)
            values = values[..., 0] if values.ndim == 3 else values
        hot = torch.zeros(self.n_classes)
        for value in np.unique(values).tolist():
            if value in self.values:
                hot[self.values[value]] = 1.0
        return hot


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


def chance_map(targets: Tensor) -> float | None:
    """About the mAP of a random ranking: the mean prevalence of the classes that have a positive."""
    prevalence = targets.double().mean(dim=0)
    present = prevalence[prevalence > 0]
    return present.mean().item() if len(present) else None


@torch.no_grad()
def multilabel_scores(
    model: torch.nn.Module,
    classifier: Tensor,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Similarities [n, K] of the loader's images to the classifier's class embeddings, and targets [n, K]."""
    feats, targets = encode_images(model, loader, device, amp_dtype)
    return feats @ classifier.float().cpu(), targets.float()
