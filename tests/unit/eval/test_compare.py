"""The paired bootstrap (eval/compare.py) on hand-made items: a model against itself, a known shift, a
difference too small to mark, items that do not match, and means resampled jointly over tasks."""

import json

import pytest
import torch

from bmca_clip.errors import ComparisonError
from bmca_clip.eval import metrics
from bmca_clip.eval.bootstrap import Clusters, cluster_counts, group_ids, percentile_interval
from bmca_clip.eval.compare import compare, mean_intervals, p_value, task_replicates, task_seed
from bmca_clip.eval.compare_report import format_comparison, write_comparison
from bmca_clip.eval.paired import (
    arrays_of,
    choice_items,
    classification_items,
    decode,
    encode,
    hit_items,
    metric_of,
)
from bmca_clip.eval.summary import summarize
from bmca_clip.eval.types.multiple_choice import multiple_choice_metrics


def _logits(preds: torch.Tensor, k: int = 2) -> torch.Tensor:
    return torch.nn.functional.one_hot(preds, k).float() * 5.0


def _record(task, preds, labels, domain="d", metric="accuracy", clusters=None):
    items = classification_items(metric, _logits(preds, int(labels.max()) + 1), labels, clusters)
    return {"task": task, "domain": domain, "main_metric": metric, "status": "ok", "items": items}


def _right_on(n_right: int, labels: torch.Tensor) -> torch.Tensor:
    """Predictions right on the first n_right items, wrong on the rest (binary labels)."""
    preds = labels.clone()
    preds[n_right:] = 1 - labels[n_right:]
    return preds


LABELS = torch.arange(100) % 2


def _table(comparison: dict) -> str:
    """The comparison table's rows, without the legend (which shows every arrow)."""
    return "\n".join(line for line in format_comparison(comparison).splitlines() if line.startswith("|"))


def test_storage_round_trips_compactly_and_scores_like_metrics():
    values = torch.tensor([0, 3, 2, 127, -5])
    assert decode(encode(values)).tolist() == values.tolist() and encode(values)["dtype"] == "int8"
    assert decode(encode(torch.tensor([0.25, -1e-7], dtype=torch.float64))).tolist() == [0.25, -1e-7]
    logits, labels = torch.randn(60, 3, generator=torch.Generator().manual_seed(1)), torch.arange(60) % 3
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "top2_accuracy"):
        items = classification_items(name, logits, labels, None)
        assert metric_of(items, arrays_of(items))(None) == metrics.classification_metric(name)(logits, labels)
    binary = logits[:, :2]
    items = classification_items("auroc", binary, labels % 2, None)
    assert metric_of(items, arrays_of(items))(None) == metrics.classification_metric("auroc")(
        binary, labels % 2
    )


def test_multiple_choice_items_score_like_its_metrics():
    preds, answers = torch.tensor([0, 1, 2, 0, 1, 1]), torch.tensor([0, 1, 1, 0, 2, 1])
    texts = ["a", "b", "b", "a", "c", "b"]
    scores = multiple_choice_metrics(["accuracy", "balanced_accuracy"], preds, answers, texts)
    for name in ("accuracy", "balanced_accuracy"):
        items = choice_items(name, preds == answers, group_ids(texts))
        assert metric_of(items, arrays_of(items))(None) == pytest.approx(scores.metrics[name], rel=1e-12)


def test_a_model_against_itself_differs_by_exactly_zero_with_p_one():
    record = _record("t", _right_on(60, LABELS), LABELS)
    out = compare({"A": [record], "B": [dict(record)]}, n_resamples=300)
    for row in [*out["tasks"], *out["means"]]:
        diff = row["diffs"]["B"]
        assert (diff["diff"], diff["low"], diff["high"], diff["p"]) == (0.0, 0.0, 0.0, 1.0)
        assert not diff["significant"]
    assert "·" in _table(out) and "↑" not in _table(out) and "↓" not in _table(out)


def test_thirty_more_right_of_a_hundred_is_detected():
    a, b = _record("t", _right_on(50, LABELS), LABELS), _record("t", _right_on(80, LABELS), LABELS)
    out = compare({"A": [a], "B": [b]}, n_resamples=1000)
    diff = out["tasks"][0]["diffs"]["B"]
    assert diff["diff"] == pytest.approx(0.30, abs=1e-12)
    assert 0.15 < diff["low"] < 0.30 < diff["high"] < 0.45  # a paired interval: only the 30 flips vary
    assert diff["significant"] and diff["p"] <= 2 / 1001
    assert "↑" in _table(out) and "↓" not in _table(out)
    # The other way round it is a significant drop.
    back = compare({"B": [b], "A": [a]}, n_resamples=1000)["tasks"][0]["diffs"]["A"]
    assert back["high"] < 0 and back["significant"] and "↓" in _table(compare({"B": [b], "A": [a]}))


def test_one_more_right_of_a_hundred_is_not_marked():
    a, b = _record("t", _right_on(60, LABELS), LABELS), _record("t", _right_on(61, LABELS), LABELS)
    diff = compare({"A": [a], "B": [b]}, n_resamples=1000)["tasks"][0]["diffs"]["B"]
    assert diff["low"] <= 0 <= diff["high"] and not diff["significant"] and diff["p"] > 0.05


def test_items_that_do_not_match_are_refused_naming_the_task():
    a = _record("chest", _right_on(50, LABELS), LABELS)
    fewer = _record("chest", _right_on(50, LABELS[:90]), LABELS[:90])
    with pytest.raises(ComparisonError, match="task 'chest'.*90 items"):
        compare({"A": [a], "B": [fewer]})
    other = _record("chest", _right_on(50, 1 - LABELS), 1 - LABELS)
    with pytest.raises(ComparisonError, match="task 'chest'.*different labels"):
        compare({"A": [a], "B": [other]})
    a["data"], b = {"fingerprint": "x"}, {**_record("chest", LABELS, LABELS), "data": {"fingerprint": "y"}}
    with pytest.raises(ComparisonError, match="task 'chest'.*fingerprints"):
        compare({"A": [a], "B": [b]})
    with pytest.raises(ComparisonError, match="compare_baseline=C"):
        compare({"A": [a], "B": [a]}, baseline="C")


def test_domain_and_overall_means_resample_every_task_jointly():
    """Two tasks in domain x and one in y: replicate r of a mean is the mean of the tasks' replicate r."""
    labels2 = torch.arange(40) % 4
    preds2_a, preds2_b = labels2.clone(), labels2.clone()
    preds2_a[:20], preds2_b[:8] = (labels2[:20] + 1) % 4, (labels2[:8] + 1) % 4
    recs = {
        "A": [
            _record("t1", _right_on(50, LABELS), LABELS, "x"),
            _record("t2", preds2_a, labels2, "x", "balanced_accuracy"),
            _record("t3", _right_on(70, LABELS), LABELS, "y"),
        ],
        "B": [
            _record("t1", _right_on(65, LABELS), LABELS, "x"),
            _record("t2", preds2_b, labels2, "x", "balanced_accuracy"),
            _record("t3", _right_on(70, LABELS), LABELS, "y"),
        ],
    }
    out = compare(recs, n_resamples=500, seed=7)
    reps = {
        r["task"]: task_replicates(r["task"], ["A", "B"], {m: recs[m][i] for m in recs}, 500, 7)
        for i, r in enumerate(recs["A"])
    }
    diff = {t: v["B"] - v["A"] for t, (_, v) in reps.items()}
    point = {t: p["B"] - p["A"] for t, (p, _) in reps.items()}
    expected = {
        "x": ((point["t1"] + point["t2"]) / 2, (diff["t1"] + diff["t2"]) / 2),
        "all tasks": (sum(point.values()) / 3, sum(diff.values()) / 3),
        "all domains": (
            ((point["t1"] + point["t2"]) / 2 + point["t3"]) / 2,
            ((diff["t1"] + diff["t2"]) / 2 + diff["t3"]) / 2,
        ),
    }
    means = {row["name"]: row for row in out["means"]}
    assert set(means) == {"x", "y", "all tasks", "all domains"}
    for name, (value, replicates) in expected.items():
        got = means[name]["diffs"]["B"]
        assert got["diff"] == pytest.approx(value, abs=1e-12)
        assert (got["low"], got["high"]) == pytest.approx(percentile_interval(replicates), abs=1e-12)
        assert got["p"] == p_value(replicates)
    assert means["y"]["diffs"]["B"]["low"] == means["y"]["diffs"]["B"]["high"] == 0.0  # t3 is the same
    # The point values are the metric's: t2 balanced accuracy, by hand 5 (A) and 2 (B) of 10 wrong per class.
    assert reps["t2"][0]["A"] == pytest.approx(0.5) and reps["t2"][0]["B"] == pytest.approx(0.8)
    # Each task draws with its own seed, the same replicate index for every model.
    counts = next(cluster_counts(torch.arange(100), None, 1, task_seed("t1", 7)))
    assert counts.sum() == 100
    assert set(mean_intervals(out)) == {(m, n) for m in "AB" for n in ("x", "y", "all tasks", "all domains")}


def test_clusters_and_hits_are_resampled_as_the_task_interval_is(tmp_path):
    hits_a, hits_b = torch.zeros(30, dtype=torch.long), torch.ones(30, dtype=torch.long)
    groups = Clusters.of([i // 3 for i in range(30)], "image")
    a = {"task": "r", "domain": "d", "main_metric": "text_to_image_R@5", "status": "ok"}
    a["items"] = hit_items("text_to_image_R@5", hits_a, groups)
    b = {**a, "items": hit_items("text_to_image_R@5", hits_b, groups)}
    missing = {**a, "task": "old", "items": None}
    out = compare({"A": [a, missing], "B": [b, {**missing}]}, n_resamples=200)
    row = out["tasks"][0]
    assert row["unit"] == "cluster (image)" and row["diffs"]["B"]["diff"] == 1.0
    assert "old" in out["skipped"] and "rerun=true" in out["skipped"]["old"]
    shuffled = {**b, "items": hit_items("text_to_image_R@5", hits_b, Clusters.of(list(range(30)), "image"))}
    with pytest.raises(ComparisonError, match="task 'r'.*different groups"):
        compare({"A": [a], "B": [shuffled]})
    json_path, md_path = write_comparison(out, tmp_path)
    assert json.loads(json_path.read_text())["tasks"][0]["diffs"]["B"]["significant"] is True
    assert "Not compared" in md_path.read_text() and "+100.00" in md_path.read_text()


def test_overall_means_cover_the_zero_shot_tasks_when_probes_are_scored_too():
    """A probe variant (`<task>@<protocol>`, its own domain row) is never averaged with zero-shot scores:
    the means over tasks and domains, in the comparison and in the summary, cover the zero-shot task."""
    zs = {m: _record("t", _right_on(n, LABELS), LABELS) for m, n in (("A", 50), ("B", 80))}
    probe = {
        m: _record("t@linear_probe", _right_on(90, LABELS), LABELS, domain="d@linear_probe") for m in "AB"
    }
    out = compare({m: [zs[m], probe[m]] for m in "AB"}, n_resamples=200)
    rows = {r["name"]: r for r in out["means"]}
    assert set(rows) == {"d", "d@linear_probe", "all tasks", "all domains"}
    assert rows["all tasks"]["n_compared"] == 1 and rows["all domains"]["n_compared"] == 1
    assert rows["all tasks"]["diffs"]["B"]["diff"] == pytest.approx(0.30, abs=1e-12)
    assert rows["d@linear_probe"]["diffs"]["B"]["diff"] == 0.0

    def cell(task, domain, value):
        return {"task": task, "type": "classification", "domain": domain, "main_metric": "accuracy",
                "status": "ok", "metrics": {"accuracy": value}}  # fmt: skip

    means = summarize({"A": [cell("t", "d", 0.5), cell("t@linear_probe", "d@linear_probe", 0.9)]}).means()
    by_name = {m.name: m.value for m in means}
    assert by_name["all tasks"] == by_name["all domains"] == 0.5 and by_name["d@linear_probe"] == 0.9
