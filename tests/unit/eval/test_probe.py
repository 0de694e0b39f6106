"""The probe fits (eval/probe.py) on hand-made features: separable classes are learnt exactly, the
validation split is stratified and seeded, the k-shot draws are seeded and hold k items per class."""

from __future__ import annotations

import torch

from bmca_clip.eval import probe
from bmca_clip.eval.metrics import balanced_accuracy, classification_metric
from tests.helpers.numeric import assert_close_scaled


def _separable(n_per_class: int, n_classes: int = 3, dim: int = 8, seed: int = 0):
    """Each class a tight cloud around its own unit axis: linearly separable by construction."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    feats = torch.eye(dim)[labels] + 0.05 * torch.randn(len(labels), dim, generator=generator)
    return torch.nn.functional.normalize(feats, dim=-1), labels


def test_a_probe_on_linearly_separable_features_scores_100_percent():
    train_feats, train_labels = _separable(20)
    test_feats, test_labels = _separable(10, seed=1)
    l2, by_l2 = probe.choose_l2(train_feats, train_labels, 3, classification_metric("balanced_accuracy"), 0)
    assert set(by_l2) == set(probe.L2_GRID) and by_l2[l2] == max(by_l2.values()) == 1.0
    assert l2 == 1.0  # every l2 separates the validation split; ties go to the strongest
    fitted = probe.fit_logistic(train_feats, train_labels, 3, l2)
    assert float(balanced_accuracy(fitted.logits(test_feats).argmax(1), test_labels)) == 1.0


def test_the_fit_is_deterministic_and_l2_shrinks_the_weights():
    feats, labels = _separable(6)
    first, again = (probe.fit_logistic(feats, labels, 3, 1e-4) for _ in range(2))
    assert torch.equal(first.weight, again.weight) and torch.equal(first.bias, again.bias)
    strong = probe.fit_logistic(feats, labels, 3, 1.0)
    assert strong.weight.norm() < first.weight.norm()


def test_the_fit_reaches_the_minimum_of_the_regularised_loss():
    feats, labels = _separable(5, n_classes=2, dim=4)
    fitted = probe.fit_logistic(feats, labels, 2, 0.1)
    weight, bias = fitted.weight.clone().requires_grad_(), fitted.bias.clone().requires_grad_()
    loss = (
        torch.nn.functional.cross_entropy(feats.double() @ weight + bias, labels) + 0.1 * weight.pow(2).sum()
    )
    loss.backward()
    assert_close_scaled(weight.grad, torch.zeros_like(weight.grad), rel=1e-6, scale=1.0)
    assert_close_scaled(bias.grad, torch.zeros_like(bias.grad), rel=1e-6, scale=1.0)


def test_the_validation_split_is_stratified_seeded_and_disjoint():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    fit, val = probe.stratified_split(labels, 0.2, seed=3)
    assert torch.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]  # a lone item stays in train
    assert sorted(fit.tolist() + val.tolist()) == list(range(16))
    again_fit, again_val = probe.stratified_split(labels, 0.2, seed=3)
    assert torch.equal(fit, again_fit) and torch.equal(val, again_val)
    other = [probe.stratified_split(labels, 0.2, seed=s)[1].tolist() for s in range(5)]
    assert len({tuple(v) for v in other}) > 1


def test_k_shot_draws_are_seeded_and_hold_k_items_per_class():
    labels = torch.tensor([0] * 30 + [1] * 20 + [2] * 3)
    for k in (1, 2, 4, 8, 16):
        idx = probe.k_shot_indices(labels, k, seed=k)
        assert torch.bincount(labels[idx], minlength=3).tolist() == [k, k, min(k, 3)]
        assert len(set(idx.tolist())) == len(idx)  # without replacement
        assert torch.equal(idx, probe.k_shot_indices(labels, k, seed=k))
    assert not torch.equal(probe.k_shot_indices(labels, 4, 0), probe.k_shot_indices(labels, 4, 1))
