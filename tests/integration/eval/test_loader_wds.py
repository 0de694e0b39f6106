"""The wds loader (bmca_clip/eval/loaders/wds.py): shards in order, image keys, classnames.txt checked."""

from __future__ import annotations

import pytest

from bmca_clip.eval.datasets import build_dataset
from bmca_clip.eval.tasks import TaskError
from tests.helpers.eval_loaders import task, to_tensor


def test_wds_reads_shards_in_order_and_checks_classnames(hub, tmp_path):
    source = "  loader: wds\n  repo_id: org/wds\n  image_column: webp\n  label_column: cls\n"
    dataset = build_dataset(task(tmp_path, "wds", source), tmp_path, to_tensor)
    assert dataset.labels == [0, 1, 2, 3, 0]
    assert "checked" in dataset.notes["class_order"]  # against classnames.txt
    either = build_dataset(task(tmp_path, "either", source.replace("webp", "jpg;webp")), tmp_path, to_tensor)
    assert either.labels == dataset.labels  # webdataset's "a;b": the first key a sample has
    with pytest.raises(TaskError, match=r"has keys \['cls', 'webp'\]; expected an image key \['jpg'\]"):
        build_dataset(task(tmp_path, "wdsjpg", source.replace("webp", "jpg")), tmp_path, to_tensor)
