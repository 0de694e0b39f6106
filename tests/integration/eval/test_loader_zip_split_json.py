"""The zip_split_json loader (bmca_clip/eval/loaders/zip_split_json.py): a split JSON naming images inside a
zip on a stand-in repo served by FakeHub."""

from __future__ import annotations

from bmca_clip.eval.datasets import build_dataset
from tests.helpers.eval_loaders import PROMPTS, centre_colours, task, to_tensor


def test_zip_split_json_finds_images_under_the_zips_top_folder(hub, tmp_path):
    source = "  loader: zip_split_json\n  repo_id: org/coop\n  archive: BTMRI.zip\n"
    source += "  split_file: split_BTMRI.json\n"
    source += (
        "  label_map: {glioma: glioma tumour, meningioma: meningioma tumour, pituitary: pituitary tumour}\n"
    )
    rest = "classes: [glioma tumour, meningioma tumour, pituitary tumour]\n" + PROMPTS
    dataset = build_dataset(task(tmp_path, "btmri", source, rest), tmp_path, to_tensor)
    assert dataset.labels == [0, 2, 0] and centre_colours(dataset) == ["red", "blue", "red"]
    assert dataset.images.describe(1).endswith("BTMRI.zip:BTMRI/pituitary/2.png")


def test_a_probe_task_reads_its_train_split_from_the_same_split_json(hub, tmp_path):
    source = "  loader: zip_split_json\n  repo_id: org/coop\n  archive: BTMRI.zip\n  split: test\n"
    source += "  split_file: split_BTMRI.json\n  label_map: {glioma: g, meningioma: m, pituitary: p}\n"
    rest = "train_split: {split: train}\nclasses: [g, m, p]\n" + PROMPTS
    dataset = build_dataset(task(tmp_path, "btmri", source, rest, kind="linear_probe"), tmp_path, to_tensor)
    assert dataset.labels == [0, 2, 0] and dataset.train.labels == [1]
    assert dataset.train.images.describe(0).endswith("BTMRI.zip:BTMRI/meningioma/1.png")
