"""Task type k_shot: few-shot linear probes, per k of the task's `shots` (default 1, 2, 4, 8, 16), on
`draws` (default 5) seeded draws of k train items per class; each draw's probe is scored on the test split.

The classifier is probe.fit_logistic at the fixed probe.FEW_SHOT_L2 (a validation split of k items per
class would leave nothing to fit; the BiomedCLIP paper reports linear probes on its few-shot draws). Draw j
of k uses the seed PROBE_SEED + 1000 k + j: the same task gives the same numbers on every run, and adding
a k or a draw leaves the others' draws as they were.

Metrics: `<metric>@<k>shot`, the mean over draws of every metric of the task, and for the main metric
also `<main>@<k>shot_std` (population std over draws), `_min` and `_max`. The main metric itself is the
mean at the largest k, so the summary table shows one k-shot number per task (its notes say which k).
Its 95% interval is the bootstrap over the test items (or their clusters) of that mean, the draws held
fixed: how much the number would move on other test items; the spread over draws is `_std`, `_min` and
`_max`. The result stores the draws' per-item predictions (paired.draw_items) for paired comparisons.
"""

from __future__ import annotations

import statistics

from torch.utils.data import DataLoader, Dataset

from bmca_clip.eval import paired, probe
from bmca_clip.eval.encoders import Encoder
from bmca_clip.eval.metrics import Scores, compute_classification_metrics
from bmca_clip.eval.spec import Task
from bmca_clip.eval.types.linear_probe import PROBE_SEED, probe_type, train_features


def draw_seed(k: int, draw: int) -> int:
    return PROBE_SEED + 1000 * k + draw


def _spread(name: str, values: list[float | None], scores: Scores, main: bool) -> None:
    defined = [v for v in values if v is not None]
    scores.metrics[name] = statistics.fmean(defined) if defined else None
    if len(defined) < len(values):
        scores.notes[name] = f"undefined in {len(values) - len(defined)} of {len(values)} draws"
    if main:
        stats = {"std": statistics.pstdev, "min": min, "max": max}
        for suffix, fn in stats.items():
            scores.metrics[f"{name}_{suffix}"] = fn(defined) if defined else None


def score(task: Task, dataset: Dataset, encoder: Encoder, loader: DataLoader) -> tuple[Scores, float]:
    """Per k, the mean (and for the main metric the spread) over draws; chance 1/K."""
    train_feats, train_labels = train_features(task, dataset, encoder, loader)
    feats, labels = encoder.images(loader)
    labels, n_classes, scores = labels.long(), len(task.classes), Scores()
    top, top_logits = max(task.shots), []
    for k in task.shots:
        per_draw = []
        for draw in range(task.draws):
            idx = probe.k_shot_indices(train_labels, k, draw_seed(k, draw))
            fitted = probe.fit_logistic(train_feats[idx], train_labels[idx], n_classes, probe.FEW_SHOT_L2)
            logits = fitted.logits(feats)
            per_draw.append(compute_classification_metrics(task.metrics, logits, labels, n_resamples=0))
            if k == top:
                top_logits.append(logits)
        for name in task.metrics:
            values = [s.metrics[name] for s in per_draw]
            _spread(f"{name}@{k}shot", values, scores, main=name == task.main_metric)
    smallest = int(train_labels.bincount(minlength=n_classes).min())
    if smallest < top:
        scores.notes["k_shot_classes"] = (
            f"a class has only {smallest} train items: for k > {smallest} it gives all of them every draw"
        )
    scores.metrics[task.main_metric] = scores.metrics[f"{task.main_metric}@{top}shot"]
    if f"{task.main_metric}@{top}shot" not in scores.notes:  # defined in every draw
        scores.items = paired.draw_items(task.main_metric, top_logits, labels, dataset.clusters)
        if scores.items is not None:
            scores.ci[task.main_metric] = paired.interval(scores.items)
    scores.notes["k_shot"] = (
        f"{task.main_metric} is the mean at k={top} over {task.draws} draws; k in {list(task.shots)}, "
        f"logistic regression at l2={probe.FEW_SHOT_L2:g} per draw (seeds {PROBE_SEED} + 1000 k + draw)"
    )
    return scores, 1.0 / n_classes


K_SHOT = probe_type(score)
