"""Per-item inputs beyond single-label zero-shot (eval/paired.py): multilabel mAP (each class's scores
kept as ranks), a linear probe's predictions and k-shot's draws. Each scores exactly like the task's own
metric, compares (a model against itself: 0 and p = 1; a known shift detected; other items refused) and
gives k-shot's main metric and mAP their intervals."""

import pytest
import torch

from bmca_clip.errors import ComparisonError
from bmca_clip.eval import metrics
from bmca_clip.eval.bootstrap import Clusters
from bmca_clip.eval.compare import compare
from bmca_clip.eval.paired import arrays_of, decode, draw_items, encode, interval, metric_of, multilabel_items
from bmca_clip.eval.types.multilabel import multilabel_metrics
from bmca_clip.eval.weighted import mean_average_precision
from tests.helpers.numeric import assert_close_scaled

N, K = 90, 4


def _targets(seed: int = 0) -> torch.Tensor:
    targets = (torch.rand(N, K, generator=torch.Generator().manual_seed(seed)) < 0.3).float()
    targets[0] = 1.0  # every class has a positive
    return targets


def _noise(seed: int) -> torch.Tensor:
    return torch.rand(N, K, generator=torch.Generator().manual_seed(seed))


def _ml_record(scores, targets, task="ml"):
    items = multilabel_items("mAP", scores, targets, None)
    return {"task": task, "domain": "surgery", "main_metric": "mAP", "status": "ok", "items": items}


def test_two_dimensional_arrays_round_trip_with_their_shape():
    values = torch.arange(12).reshape(3, 4) - 5
    stored = encode(values)
    assert stored["shape"] == [3, 4] and stored["dtype"] == "int8"
    assert torch.equal(decode(stored), values)
    assert "shape" not in encode(torch.arange(3))


def test_multilabel_items_score_exactly_like_map_on_the_scores_ties_included():
    targets = _targets()
    scores = (_noise(1) * 4).round() / 4  # five distinct values per class: many ties
    items = multilabel_items("mAP", scores, targets, None)
    arrays = arrays_of(items)
    assert set(arrays) == {"targets", "ranks"} and arrays["ranks"].shape == (N, K)
    expected, _ = mean_average_precision(scores.double(), targets.double())
    assert metric_of(items, arrays)(None) == pytest.approx(expected, rel=1e-12)
    weights = torch.rand(5, N, generator=torch.Generator().manual_seed(2)) * 3
    assert_close_scaled(
        metric_of(items, arrays)(weights),
        mean_average_precision(scores.double(), targets, weights=weights)[0],
        rel=1e-12,
    )


def test_multilabel_map_has_an_interval_over_items_or_clusters():
    targets = _targets()
    scores = targets + _noise(3)
    result = multilabel_metrics(["mAP"], scores, targets, ["a", "b", "c", "d"])
    ci = result.ci["mAP"]
    assert ci["unit"] == "item" and ci["low"] <= result.metrics["mAP"] <= ci["high"] < 1.0 + 1e-12
    videos = Clusters.of([i // 10 for i in range(N)], "video")
    clustered = multilabel_metrics(["mAP"], scores, targets, clusters=videos).ci["mAP"]
    assert clustered["unit"] == "cluster (video)" and clustered["low"] <= result.metrics["mAP"]


def test_multilabel_against_itself_is_zero_and_a_better_ranking_is_detected():
    targets = _targets()
    chance, good = _ml_record(_noise(4), targets), _ml_record(targets + 0.5 * _noise(5), targets)
    same = compare({"A": [chance], "B": [dict(chance)]}, n_resamples=300)
    diff = same["tasks"][0]["diffs"]["B"]
    assert (diff["diff"], diff["low"], diff["high"], diff["p"]) == (0.0, 0.0, 0.0, 1.0)
    better = compare({"A": [chance], "B": [good]}, n_resamples=300)
    diff = better["tasks"][0]["diffs"]["B"]
    assert diff["significant"] and diff["low"] > 0 and diff["p"] <= 2 / 301 + 1e-12
    assert not better["skipped"] and better["means"][0]["diffs"]["B"]["significant"]
    other = _ml_record(_noise(4), _targets(seed=9))
    with pytest.raises(ComparisonError, match="task 'ml'.*different targets"):
        compare({"A": [chance], "B": [other]}, n_resamples=50)


def _logits(seed: int, labels: torch.Tensor, signal: float) -> torch.Tensor:
    noise = torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(seed))
    return noise + signal * torch.nn.functional.one_hot(labels, 3)


def _kshot_record(signal: float, draws: int = 3, metric: str = "balanced_accuracy"):
    labels = torch.arange(120) % 3
    logits = [_logits(seed, labels, signal) for seed in range(draws)]
    items = draw_items(metric, logits, labels, None)
    record = {"task": "ks", "domain": "d", "main_metric": metric, "status": "ok", "items": items}
    return record, logits, labels


@pytest.mark.parametrize("metric", ["balanced_accuracy", "accuracy", "top2_accuracy"])
def test_k_shot_items_are_the_mean_over_draws_of_each_draws_metric(metric):
    record, logits, labels = _kshot_record(1.0, metric=metric)
    items, fn = record["items"], metrics.classification_metric(metric)
    assert items["draws"] == 3
    mean = sum(fn(each, labels) for each in logits) / 3
    assert metric_of(items, arrays_of(items))(None) == pytest.approx(mean, rel=1e-12)
    weights = torch.rand(4, 120, generator=torch.Generator().manual_seed(7)).round()
    per_draw = torch.stack([fn(each, labels, weights) for each in logits]).mean(dim=0)
    assert_close_scaled(metric_of(items, arrays_of(items))(weights), per_draw, rel=1e-12)
    ci = interval(items, n_resamples=200)
    assert ci["unit"] == "item" and ci["low"] <= mean <= ci["high"]


def test_k_shot_draws_compare_and_differently_drawn_results_are_refused():
    weak, _, _ = _kshot_record(0.2)
    strong, _, _ = _kshot_record(3.0)
    diff = compare({"weak": [weak], "strong": [strong]}, n_resamples=300)["tasks"][0]["diffs"]["strong"]
    assert diff["significant"] and diff["low"] > 0
    five, _, _ = _kshot_record(0.2, draws=5)
    with pytest.raises(ComparisonError, match="3 vs 5 k-shot draws"):
        compare({"three": [weak], "five": [five]}, n_resamples=50)
