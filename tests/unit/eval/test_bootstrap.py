"""Cluster bootstrap: items that are not independent (crops or captions of one image, images of one
patient) are resampled as whole clusters, so their intervals are not too narrow."""

from dataclasses import replace

import pytest
import torch

from bmca_clip.eval.bootstrap import Clusters, cluster_counts
from bmca_clip.eval.datasets import build_dataset
from bmca_clip.eval.harness import evaluate_task
from bmca_clip.eval.loaders.table import Table, file_images
from bmca_clip.eval.metrics import bootstrap_ci, compute_classification_metrics
from bmca_clip.eval.tasks import TaskError, load_task
from bmca_clip.eval.types import TASK_TYPES
from bmca_clip.eval.types.retrieval import recall_intervals
from tests.helpers.eval_fixtures import (
    COLOR_TASK_BODY,
    RETRIEVAL_TASK_BODY,
    make_color_task_data,
    tiny_clip,
    write_task_yaml,
)
from tests.helpers.numeric import assert_close_scaled

NAMES = ["accuracy", "balanced_accuracy", "macro_f1", "top2_accuracy"]


def _task(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) + 1.0 * torch.nn.functional.one_hot(labels, k)
    return logits, labels


def _bounds(ci: dict) -> torch.Tensor:
    return torch.tensor([[c["low"], c["high"]] for c in ci.values()], dtype=torch.float64)


def _widths(ci: dict) -> torch.Tensor:
    return _bounds(ci)[:, 1] - _bounds(ci)[:, 0]


@pytest.mark.parametrize("k, copies", [(3, 4), (2, 3)])
def test_duplicated_items_in_one_cluster_give_the_interval_of_the_deduplicated_data(k, copies):
    logits, labels = _task(150, k, seed=k)
    names = NAMES[:3] + (["auroc"] if k == 2 else ["top2_accuracy"])
    dedup = compute_classification_metrics(names, logits, labels).ci
    # Every item `copies` times, its copies one cluster (crops of one image, say).
    dup_logits, dup_labels = logits.repeat_interleave(copies, 0), labels.repeat_interleave(copies)
    clusters = Clusters(torch.arange(150).repeat_interleave(copies), "image")
    grouped = compute_classification_metrics(names, dup_logits, dup_labels, clusters=clusters).ci
    items = compute_classification_metrics(names, dup_logits, dup_labels).ci
    assert list(grouped) == names and all(c["unit"] == "cluster (image)" for c in grouped.values())
    # Same draws of the same distinct items: equal up to float rounding, not just sampling noise.
    assert_close_scaled(_bounds(grouped), _bounds(dedup), rel=1e-9)
    # The item bootstrap believes there are `copies` times more independent items: about sqrt(copies)
    # times narrower (4 copies: half as wide).
    assert (_widths(items) < _widths(grouped) / copies**0.5 * 1.3).all(), (_widths(items), _widths(grouped))


def test_one_item_per_cluster_is_exactly_the_item_bootstrap():
    logits, labels = _task(200, 4, seed=1)
    items = compute_classification_metrics(NAMES, logits, labels).ci
    singletons = compute_classification_metrics(
        NAMES, logits, labels, clusters=Clusters.of(range(200), "x")
    ).ci
    assert _bounds(items).tolist() == _bounds(singletons).tolist()


def test_a_drawn_cluster_brings_all_its_items():
    # Clusters of 1 to 5 items with mixed categories (one category per item here).
    sizes = [1, 3, 5, 2, 2, 4, 1, 5]
    groups = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    n = len(groups)
    counts = torch.cat(list(cluster_counts(torch.arange(n), groups, n_resamples=300, seed=0)))
    assert counts.shape == (300, n)
    for g in range(len(sizes)):
        members = counts[:, groups == g]
        assert (members == members[:, :1]).all()  # all items of a cluster drawn together
    drawn_clusters = torch.stack([counts[:, groups == g][:, 0] for g in range(len(sizes))], dim=1)
    assert (drawn_clusters.sum(dim=1) == len(sizes)).all()  # as many clusters as there are, per resample
    again = torch.cat(list(cluster_counts(torch.arange(n), groups, n_resamples=300, seed=0)))
    assert torch.equal(counts, again)  # seeded


def test_callable_metrics_resample_clusters_too():
    logits, labels = _task(120, 3, seed=7)
    dup_logits, dup_labels = logits.repeat_interleave(3, 0), labels.repeat_interleave(3)
    groups = torch.arange(120).repeat_interleave(3)
    fast = bootstrap_ci("accuracy", dup_logits, dup_labels, n_resamples=400, groups=groups)
    slow = bootstrap_ci(
        lambda x, y: (x.argmax(1) == y).double().mean().item(), dup_logits, dup_labels, 400, groups=groups
    )
    assert fast == pytest.approx(slow, abs=0.03)  # different draws of one distribution
    assert fast == pytest.approx(bootstrap_ci("accuracy", logits, labels, n_resamples=400), abs=1e-12)


def test_retrieval_resamples_images_with_all_their_captions():
    # 60 images with 4 captions each; an image's captions are all found or all missed.
    image_hit = torch.rand(60, generator=torch.Generator().manual_seed(0)) < 0.6
    owner = torch.arange(60).repeat_interleave(4)
    hits = {"text_to_image_R@1": image_hit[owner], "image_to_text_R@1": image_hit}
    by_image = recall_intervals(hits, n_resamples=1000, text_to_image=owner)
    one_caption = recall_intervals({"text_to_image_R@1": image_hit}, n_resamples=1000)
    by_query = recall_intervals(hits, n_resamples=1000)  # what main did: captions as independent
    assert by_image["text_to_image_R@1"]["unit"] == "cluster (image)"
    assert by_image["image_to_text_R@1"]["unit"] == "query"  # one query per image already
    got = torch.tensor([by_image["text_to_image_R@1"]["low"], by_image["text_to_image_R@1"]["high"]])
    want = torch.tensor([one_caption["text_to_image_R@1"]["low"], one_caption["text_to_image_R@1"]["high"]])
    assert_close_scaled(got, want, rel=1e-9)
    assert _widths({"x": by_query["text_to_image_R@1"]}) < 0.65 * _widths(
        {"x": by_image["text_to_image_R@1"]}
    )


def test_retrieval_group_column_clusters_images_and_their_captions():
    image_hit = torch.tensor([True, True, False, False, True, False] * 10)
    owner = torch.arange(60).repeat_interleave(2)
    patients = Clusters.of([i // 3 for i in range(60)], "patient")  # 3 images per patient
    hits = {"text_to_image_R@1": image_hit[owner], "image_to_text_R@1": image_hit}
    ci = recall_intervals(hits, n_resamples=500, text_to_image=owner, image_clusters=patients)
    assert ci["text_to_image_R@1"]["unit"] == ci["image_to_text_R@1"]["unit"] == "cluster (patient)"
    assert ci["text_to_image_R@1"]["low"] == ci["image_to_text_R@1"]["low"]  # same clusters, same hits


# --- group_column in a task YAML ---


def _grouped_color_task(tmp_path, column: str):
    make_color_task_data(tmp_path / "colors", per_class=3)
    # Add a patient column: rows 0-2, 3-5, ... belong to one patient each.
    table = tmp_path / "colors" / "test.csv"
    lines = table.read_text().splitlines()
    rows = [f"{line},p{(i - 1) // 3}" if i else f"{line},patient" for i, line in enumerate(lines)]
    table.write_text("\n".join(rows) + "\n")
    body = COLOR_TASK_BODY.replace(
        "  label_encoding: int", f"  label_encoding: int\n  group_column: {column}"
    )
    return load_task(write_task_yaml(tmp_path, "colors", body))


def test_a_task_with_group_column_carries_its_clusters(tmp_path):
    task = _grouped_color_task(tmp_path, "patient")
    assert task.source.group_column == "patient"
    dataset = build_dataset(task, tmp_path, lambda img: img)
    assert dataset.clusters.name == "patient"
    assert dataset.clusters.ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_the_harness_resamples_the_group_column_clusters(tmp_path):
    task = _grouped_color_task(tmp_path, "patient")
    model, preprocess, tokenizer = tiny_clip()
    result = evaluate_task(task, model, preprocess, tokenizer, "cpu", tmp_path)
    assert result.status == "ok" and result.ci["unit"] == "cluster (patient)"


def test_a_misspelled_group_column_names_it_and_the_columns(tmp_path):
    task = _grouped_color_task(tmp_path, "patiant")
    with pytest.raises(TaskError, match=r"'patiant'.*source\.group_column.*patient"):
        build_dataset(task, tmp_path, lambda img: img)


def test_group_column_is_checked_on_load(tmp_path):
    body = COLOR_TASK_BODY.replace("  label_encoding: int", "  label_encoding: int\n  group_column: [a, b]")
    with pytest.raises(TaskError, match="source.group_column"):
        load_task(write_task_yaml(tmp_path, "t", body))
    retrieval = load_task(
        write_task_yaml(
            tmp_path,
            "r",
            RETRIEVAL_TASK_BODY.replace("  caption_column", "  group_column: fig\n  caption_column"),
        )
    )
    assert retrieval.source.group_column == "fig"


def test_detection_crops_are_clustered_by_their_image(tmp_path):
    make_color_task_data(tmp_path / "colors", per_class=1)
    task = load_task(write_task_yaml(tmp_path, "colors", COLOR_TASK_BODY))
    task = replace(
        task, source=replace(task.source, label_column="objects", label_encoding="detection_crops")
    )
    boxes = [
        {"bbox": [[0, 0, 8, 8], [8, 8, 8, 8]], "category": [0, 1]},
        {"bbox": [[0, 0, 9, 9]], "category": [2]},
    ]
    images = file_images([tmp_path / "colors/images/0_0.png", tmp_path / "colors/images/1_0.png"])
    table = Table("t", {"objects": boxes}, {"image": images}, [0, 1])
    dataset = TASK_TYPES["classification"].build(task, table, lambda img: img)
    assert dataset.labels == [0, 1, 2]
    assert dataset.clusters.name == "image" and dataset.clusters.ids.tolist() == [0, 0, 1]
