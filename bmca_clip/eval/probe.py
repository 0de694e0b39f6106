"""Classifiers fitted on frozen image features: the linear probe and the k-shot draws (types/linear_probe.py,
types/k_shot.py score with them).

`fit_logistic`: multinomial logistic regression, weights [d, K] and bias [K], full batch L-BFGS on the CPU
in float64, from zeros: the same features give the same weights (no random init, no minibatch order).
The loss is the mean cross-entropy + l2 * ||W||^2 (the bias is not penalised).

`linear_probe`: l2 chosen on a stratified, seeded validation split carved from the train split
(VAL_FRACTION of each class with at least 2 items), over L2_GRID (1e-6 .. 1e0, log-spaced), by the task's
main metric; ties go to the stronger regularisation. The probe is then refit on train + val at that l2.

`k_shot_indices`: k items of each class drawn without replacement from the train split by a seeded
generator (one seed per draw); a class with fewer than k items gives all of them. A k-shot classifier is
`fit_logistic` at the fixed FEW_SHOT_L2: with 1-16 items per class a validation split would leave nothing
to fit (the BiomedCLIP paper, too, reports linear probes on few-shot draws).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bmca_clip.eval.metrics import UndefinedMetric

L2_GRID = tuple(10.0**e for e in range(-6, 1))  # 1e-6 .. 1e0
VAL_FRACTION = 0.2
FEW_SHOT_L2 = 1e-3
MAX_ITER = 200


@dataclass(frozen=True)
class Probe:
    """A fitted linear classifier: logits = feats @ weight + bias."""

    weight: Tensor  # [d, K]
    bias: Tensor  # [K]

    def logits(self, feats: Tensor) -> Tensor:
        return (feats.double() @ self.weight + self.bias).float()


def fit_logistic(feats: Tensor, labels: Tensor, n_classes: int, l2: float, max_iter: int = MAX_ITER) -> Probe:
    """Multinomial logistic regression by full-batch L-BFGS from zeros (module docstring)."""
    x, y = feats.detach().double().cpu(), labels.long().cpu()
    weight = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return Probe(weight.detach(), bias.detach())


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, val indices): per class, round(fraction * n) items to val (at least 1 where the
    class has 2 or more, never all of them), chosen by a generator seeded with seed; both sorted."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = min(max(round(fraction * len(members)), 1), len(members) - 1) if len(members) > 1 else 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _value(metric: Callable[[Tensor, Tensor], float], logits: Tensor, labels: Tensor) -> float:
    try:
        value = float(metric(logits, labels))
    except UndefinedMetric:  # e.g. AUROC on a validation split holding one class
        return float("-inf")
    return value if value == value else float("-inf")  # NaN -> never chosen


def choose_l2(
    feats: Tensor,
    labels: Tensor,
    n_classes: int,
    metric: Callable[[Tensor, Tensor], float],
    seed: int,
    grid: Sequence[float] = L2_GRID,
) -> tuple[float, dict[float, float]]:
    """(the grid's l2 with the best validation metric, the metric of every l2) on a stratified split;
    ties go to the largest l2. ValueError when no class has 2 items (nothing to validate on)."""
    fit_idx, val_idx = stratified_split(labels, VAL_FRACTION, seed)
    if len(val_idx) == 0:
        raise ValueError("no class has 2 train items, so no validation split can be carved")
    scores = {}
    for l2 in grid:
        probe = fit_logistic(feats[fit_idx], labels[fit_idx], n_classes, l2)
        scores[l2] = _value(metric, probe.logits(feats[val_idx]), labels[val_idx])
    best = max(sorted(grid, reverse=True), key=lambda l2: scores[l2])
    return best, scores


def k_shot_indices(labels: Tensor, k: int, seed: int) -> Tensor:
    """k items of every class present (all of a class with fewer), drawn by a generator seeded with seed;
    sorted indices into labels."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(chosen).sort().values
