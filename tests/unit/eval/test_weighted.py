"""One weighted statistic per metric (eval/weighted.py): the point value is the statistic at unit weights
and equals scikit-learn's; given bootstrap resample counts as weights (item or cluster bootstrap), the
statistic equals the metric recomputed on the explicitly resampled arrays. Random data with many ties."""

import warnings

import numpy as np
import pytest
import torch

from tests.helpers.numeric import assert_close_scaled

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from bmca_clip.eval.bootstrap import cluster_counts  # noqa: E402  (after the importorskip)
from bmca_clip.eval.metrics import _categories, classification_metric  # noqa: E402
from bmca_clip.eval.weighted import (  # noqa: E402
    UndefinedMetric,
    average_precision,
    hit_rate,
    macro_hit_rate,
    mean_average_precision,
)

SEEDS = range(8)
NAMES = ["accuracy", "balanced_accuracy", "macro_f1", "top1_accuracy", "top2_accuracy"]


def _case(seed: int, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, K], labels [n]): coarse logits (ties within and across rows), some classes missing."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(30, 120)), k or int(rng.integers(3, 8))
    labels = rng.choice(rng.choice(k, size=int(rng.integers(2, k + 1)), replace=False), size=n)
    logits = np.round(rng.normal(size=(n, k)) + 1.2 * np.eye(k)[labels])
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)


def _sklearn(name: str, logits: torch.Tensor, labels: torch.Tensor) -> float:
    y, p, k = labels.numpy(), logits.argmax(dim=1).numpy(), logits.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        if name == "auroc":
            return sklearn_metrics.roc_auc_score(y, torch.softmax(logits.double(), dim=1)[:, 1].numpy())
        if name.startswith("top"):
            return sklearn_metrics.top_k_accuracy_score(
                y, logits.numpy(), k=int(name[3]), labels=np.arange(k)
            )
        return {
            "accuracy": sklearn_metrics.accuracy_score,
            "balanced_accuracy": sklearn_metrics.balanced_accuracy_score,
            "macro_f1": lambda y, p: sklearn_metrics.f1_score(y, p, average="macro"),
        }[name](y, p)


def _draws(n: int, seed: int, clustered: bool) -> torch.Tensor:
    """Bootstrap counts [r, n] of each item, as the CI code draws them; clustered: items in random
    clusters of 1-4, each drawn cluster bringing all its items (cluster_counts expands them to items)."""
    groups = torch.randint(n // 3, (n,), generator=torch.Generator().manual_seed(seed)) if clustered else None
    return torch.cat(list(cluster_counts(torch.arange(n), groups, n_resamples=6, seed=seed)))


def _resampled(counts: torch.Tensor, *arrays: torch.Tensor):
    """Each row of counts as explicit arrays: item i repeated counts[i] times."""
    for row in counts.long():
        yield [a.repeat_interleave(row, dim=0) for a in arrays]


@pytest.mark.parametrize("seed", SEEDS)
def test_point_value_is_the_statistic_at_unit_weights_and_equals_sklearn(seed):
    # Binary: scikit-learn's top_k_accuracy_score refuses 2-column scores, so no top-k reference there.
    for k, names in ((None, NAMES), (2, [*NAMES[:3], "auroc"])):
        logits, labels = _case(seed, k)
        n = len(labels)
        for name in names:
            metric = classification_metric(name)
            point = metric(logits, labels)
            assert isinstance(point, float)
            assert metric(logits, labels, torch.ones(n)) == point
            assert metric(logits, labels, torch.ones(1, n)).tolist() == [point]
            assert point == pytest.approx(_sklearn(name, logits, labels), rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("clustered", [False, True])
@pytest.mark.parametrize("seed", SEEDS[:4])
def test_bootstrap_weights_equal_the_metric_on_resampled_arrays(seed, clustered):
    for k, names in ((None, NAMES), (2, [*NAMES[:4], "auroc"])):
        logits, labels = _case(seed, k)
        counts = _draws(len(labels), seed, clustered)
        for name in names:
            metric = classification_metric(name)
            expected = []
            for x, y in _resampled(counts, logits, labels):
                try:
                    expected.append(metric(x, y))
                except UndefinedMetric:
                    expected.append(float("nan"))  # a resample that drew one class only (AUROC)
            got = metric(logits, labels, counts)
            assert_close_scaled(got, torch.tensor(expected, dtype=torch.float64), rel=1e-12, msg=name)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_items_of_one_category_are_interchangeable(seed):
    """The CI scores category representatives weighted by the drawn items' counts (metrics._categories):
    for any item weights, that equals the metric of the items themselves."""
    logits, labels = _case(seed, 2)
    names = [*NAMES, "auroc"]
    reps, category = _categories(names, logits, labels)
    weights = torch.randint(0, 4, (5, len(labels)), generator=torch.Generator().manual_seed(seed)).float()
    per_category = weights.new_zeros(5, len(reps)).index_add_(1, category, weights)
    for name in names:
        metric = classification_metric(name)
        assert_close_scaled(
            metric(logits[reps], labels[reps], per_category), metric(logits, labels, weights), rel=1e-12
        )


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_hit_rates_of_retrieval_and_multiple_choice(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 90))
    hits, answers = torch.tensor(rng.random(n) < 0.4), torch.tensor(rng.integers(0, 5, n))
    assert hit_rate(hits) == pytest.approx(hits.double().mean().item(), rel=1e-12)
    # Multiple choice's balanced accuracy: the mean over answers of the hit rate, i.e. scikit-learn's
    # balanced accuracy with the answers as classes and a miss predicting no class.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": the -1 of a miss
        reference = sklearn_metrics.balanced_accuracy_score(answers, torch.where(hits, answers, -1))
    assert macro_hit_rate(hits, answers) == pytest.approx(reference, rel=1e-12)
    counts = _draws(n, seed, clustered=True)
    expected = [(hit_rate(h), macro_hit_rate(h, a)) for h, a in _resampled(counts, hits, answers)]
    got = torch.stack([hit_rate(hits, counts), macro_hit_rate(hits, answers, counts)], dim=1)
    assert_close_scaled(got, torch.tensor(expected, dtype=torch.float64), rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_average_precision_and_map_are_weighted_statistics(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(20, 80)), 4
    targets = torch.tensor((rng.random((n, k)) < 0.3).astype(float))
    targets[0] = 1.0  # every class has a positive
    scores = torch.tensor(np.round(rng.normal(size=(n, k)) + targets.numpy(), 1))
    weights = torch.tensor(rng.integers(1, 4, n).astype(float))
    for c in range(k):
        assert average_precision(scores[:, c], targets[:, c], weights) == pytest.approx(
            sklearn_metrics.average_precision_score(targets[:, c], scores[:, c], sample_weight=weights),
            rel=1e-9,
        )
    point, _ = mean_average_precision(scores, targets)
    assert point == mean_average_precision(scores, targets, weights=torch.ones(n))[0]
    counts = _draws(n, seed, clustered=True)
    expected = []
    for s, t in _resampled(counts, scores, targets):
        present = t.sum(dim=0) > 0  # a class no drawn image has drops out of that resample's mean
        expected.append(mean_average_precision(s[:, present], t[:, present])[0])
    got, _ = mean_average_precision(scores, targets, weights=counts)
    assert_close_scaled(got, torch.tensor(expected, dtype=torch.float64), rel=1e-12)


def test_weights_that_do_not_fit_are_refused_and_zero_weight_is_no_sample():
    logits, labels = _case(0)
    with pytest.raises(ValueError, match=r"weights \(3,\) must be \[n\] or \[r, n\]"):
        classification_metric("accuracy")(logits, labels, torch.ones(3))
    with pytest.raises(UndefinedMetric, match="no samples"):
        classification_metric("macro_f1")(logits, labels, torch.zeros(len(labels)))
    # A class whose items all weigh 0 drops out of balanced accuracy, as from a resample without it.
    preds, truth = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
    assert classification_metric("balanced_accuracy")(
        torch.nn.functional.one_hot(preds, 3).float(), truth, torch.tensor([1.0, 1.0, 0.0, 0.0])
    ) == pytest.approx(1.0)
