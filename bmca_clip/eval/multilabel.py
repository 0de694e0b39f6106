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

from bmca_clip.eval.metrics import NON_FINITE, Scores, UndefinedMetric
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


def average_precision(scores: Tensor, targets: Tensor) -> float:
    """AP of ranking by scores (higher first) for binary targets: sum over thresholds of
    (recall gain) x precision, tied scores forming one threshold (scikit-learn's definition)."""
    scores, targets = scores.double().flatten(), targets.double().flatten()
    n_pos = targets.sum().item()
    if n_pos == 0:
        raise UndefinedMetric("no positive image")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, targets = scores[order], targets[order]
    ends = torch.cat([torch.nonzero(scores[1:] != scores[:-1]).flatten(), torch.tensor([len(scores) - 1])])
    tp = targets.cumsum(0)[ends]
    precision = tp / (ends + 1).double()
    recall = tp / n_pos
    gain = torch.diff(recall, prepend=torch.zeros(1, dtype=recall.dtype))
    return (gain * precision).sum().item()


def mean_average_precision(
    scores: Tensor, targets: Tensor, classes: Sequence[str] = ()
) -> tuple[float, str | None]:
    """mAP over the classes with a positive in targets [n, K], and a note naming the classes left out."""
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(
            f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be [n, K]"
        )
    names = list(classes) or [str(k) for k in range(targets.shape[1])]
    present = [k for k in range(targets.shape[1]) if targets[:, k].sum() > 0]
    if not present:
        raise UndefinedMetric("no class has a positive image")
    value = sum(average_precision(scores[:, k], targets[:, k]) for k in present) / len(present)
    absent = [names[k] for k in range(targets.shape[1]) if k not in present]
    note = f"mean over {len(present)} classes; no positive image, left out: {absent}" if absent else None
    return value, note


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
