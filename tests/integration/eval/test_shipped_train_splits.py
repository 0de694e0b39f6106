"""The train splits of the shipped tasks that declare one (conf/tasks/*.yaml `train_split`), read from
stand-ins of their real hub repos served by FakeHub: each YAML as shipped, both splits built as the
linear_probe / k_shot protocols build them (protocols.expand, datasets.build_dataset), and a suite with
`protocols: [zero_shot, linear_probe, k_shot]` scored end to end for one task of each loader family.

The stand-ins (tests/helpers/shipped_train_repos.py) follow the layouts TASKS.md §0.2 / §0.3 and
TASK_AUDIT.md describe:
- danjacobellis/*mnist_224 (6 tasks, loader hf_dataset): parquet splits train / validation / test with
  columns path (string), label (sequence<uint8>, the class at [0]) and image; a card whose configs name
  each split's files. Assumed (unread on the hub): the shard file names, that the configs list all three
  splits, and that the train split's label is typed as the test split's.
- TahaKoleilat/BiomedCoOp (8 tasks, loader zip_split_json): <NAME>.zip and split_<NAME>.json at the repo
  root, the JSON {"train", "val", "test": [[relpath, label, classname], ...]}. Assumed: the JSONs sit at
  the hub root (TASK_AUDIT.md "open" 5: the hub listing stops after Kvasir.zip), the zip's folders
  (<NAME>/<class>/<file>, relpaths without <NAME>/), and that train entries carry the test entries' class
  names (the label_map keys, or the class itself for the YAMLs without a label_map).
Every split holds items of every class in its own order, so a wrong split shows in the labels.
"""

from __future__ import annotations

import json
import math

import pytest
from huggingface_hub import constants as hf_constants

from bmca_clip.eval.cache import dataset_fingerprint
from bmca_clip.eval.datasets import build_dataset
from bmca_clip.eval.harness import evaluate_suite
from bmca_clip.eval.protocols import expand
from bmca_clip.eval.suite import suite_from_config
from bmca_clip.eval.tasks import TaskError, load_task
from tests.helpers.config import REPO
from tests.helpers.eval_hub_repos import image_bytes, write_hf_file
from tests.helpers.eval_loaders import to_tensor
from tests.helpers.hub import FakeHub
from tests.helpers.shipped_train_repos import (
    PER_CLASS,
    class_colour,
    medmnist_features,
    shipped_yaml,
    split_labels,
    write_shipped_repos,
)

MEDMNIST = ["bloodmnist8", "dermamnist7", "octmnist4", "organamnist_ct11", "retinamnist_dr5"]
MEDMNIST += ["tissuemnist_kidney8"]
COOP = ["brain_tumor_mri4", "busi_breast_us3", "covid_qu_ex_cxr4", "ct_kidney4", "fundus_disease4"]
COOP += ["kather2016_crc8", "knee_oa_kl5", "kvasir_gi8"]
SHIPPED = MEDMNIST + COOP
SYNTHETIC = ["synthetic_color", "synthetic_modality"]  # local data, covered by their own tests


def test_the_list_is_every_shipped_task_with_a_train_split():
    declared = [
        p.stem for p in sorted((REPO / "conf/tasks").glob("*.yaml")) if "train_split" in shipped_yaml(p.stem)
    ]
    assert declared == sorted(SHIPPED + SYNTHETIC)
    assert {shipped_yaml(n)["source"]["loader"] for n in MEDMNIST} == {"hf_dataset"}
    assert {shipped_yaml(n)["source"]["loader"] for n in COOP} == {"zip_split_json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Stand-ins of the 7 repos behind the 14 tasks on one FakeHub, at main (the YAMLs pin no revision)."""
    root = tmp_path_factory.mktemp("shipped-train")
    with FakeHub() as server, server.use(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_constants, "HF_HUB_CACHE", str(root / "hf-cache"))
        for repo_id, folder in write_shipped_repos(root / "repos", SHIPPED).items():
            server.add_dataset(repo_id, folder)
        yield root


def _probe_task(name: str):
    """The shipped task as the linear_probe protocol derives it (`<name>@linear_probe`)."""
    shipped = load_task(name)
    assert shipped.source.revision is None and shipped.train_split is not None
    (probed,) = expand((shipped,), ("linear_probe",))
    return shipped, probed


@pytest.mark.parametrize("name", SHIPPED)
def test_the_train_split_reads_the_train_items_with_the_test_splits_labels(served, name):
    shipped, probed = _probe_task(name)
    n = len(shipped.classes)
    assert probed.train_split.split == "train" and probed.train_split.repo_id == shipped.source.repo_id
    dataset = build_dataset(probed, served, to_tensor)
    train = dataset.train
    assert dataset.labels == split_labels("test", n)
    assert train.labels == split_labels("train", n) and len(train) == PER_CLASS["train"] * n
    assert sorted(set(train.labels)) == list(range(n))  # every class reached through the train split too
    assert all("test" in dataset.images.describe(i) for i in range(len(dataset)))
    assert all("train" in train.images.describe(i) for i in range(len(train)))
    # The same class checks ran on both splits, with the same outcome.
    assert train.notes.get("class_order") == dataset.notes.get("class_order")
    if shipped.source.loader == "zip_split_json":  # the JSON's names, through label_map if any
        assert dataset.notes["class_order"].startswith("checked against the data's class names")
    else:  # MedMNIST_224's sequence<uint8> names nothing: the YAML's order (info.py) stands unchecked
        assert "class_order" not in dataset.notes and shipped.unverified == ()
    # Both splits were read at one commit, and the embedding cache keys them apart (cache.py).
    assert train.notes["hub_commit"] == dataset.notes["hub_commit"] and len(train.notes["hub_commit"]) == 40
    fingerprints = dataset_fingerprint(dataset), dataset_fingerprint(train)
    assert None not in fingerprints and fingerprints[0] != fingerprints[1]
    # Each train image is the one its entry names: its colour is its label's.
    for i in range(len(train)):
        image, label = train[i][:2]
        centre = tuple(round(float(v) * 255) for v in image[:, 8, 8])
        assert int(label) == train.labels[i] and centre == class_colour(train.labels[i], n)


def _refused(tmp_path, monkeypatch, name: str, folder) -> str:
    """The one-line TaskError of building `<name>@linear_probe` from folder, served alone."""
    with FakeHub() as server, server.use():
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        server.add_dataset(shipped_yaml(name)["source"]["repo_id"], folder)
        with pytest.raises(TaskError) as info:
            build_dataset(_probe_task(name)[1], tmp_path, to_tensor)
    message = str(info.value)
    assert "\n" not in message and f"task '{name}@linear_probe'" in message
    return message


def test_a_medmnist_train_label_beyond_the_classes_is_refused(tmp_path, monkeypatch):
    task = shipped_yaml("bloodmnist8")
    folder = write_shipped_repos(tmp_path / "repos", ["bloodmnist8"])[task["source"]["repo_id"]]
    for shard in folder.glob("data/train-*"):
        shard.unlink()
    image = {"bytes": image_bytes((0, 0, 0), size=16), "path": None}
    bad = {"path": ["train/0.png"], "label": [[8]], "image": [image]}
    write_hf_file(folder / "data/train-00000-of-00001.parquet", bad, medmnist_features())
    message = _refused(tmp_path, monkeypatch, "bloodmnist8", folder)
    assert (
        "data/train-00000-of-00001.parquet column 'label'" in message and "label 8 is out of range" in message
    )


def test_a_label_the_split_json_names_two_ways_is_refused(tmp_path, monkeypatch):
    """A train entry whose label and class name disagree (label 1, named as class 0) must not be scored.
    The loader took each label's name from every split and kept one of two names silently (the last in
    sorted order: here the right one), so the item was fitted as class 1 unnoticed."""
    task = shipped_yaml("kvasir_gi8")
    folder = write_shipped_repos(tmp_path / "repos", ["kvasir_gi8"])[task["source"]["repo_id"]]
    path = folder / task["source"]["split_file"]
    splits = json.loads(path.read_text())
    relpath, label, name = splits["train"][-1]
    assert (label, name) == (0, "dyed lifted polyps")
    splits["train"][-1] = [relpath, 1, name]
    path.write_text(json.dumps(splits))
    message = _refused(tmp_path, monkeypatch, "kvasir_gi8", folder)
    assert "split_Kvasir.json" in message
    assert "label 1 has 2 class names: 'dyed resection margins' (test 1, train 2, val 1), " in message
    assert "'dyed lifted polyps' (train 1)" in message


@pytest.mark.parametrize("name", ["bloodmnist8", "brain_tumor_mri4"])
def test_a_suite_scores_zero_shot_linear_probe_and_k_shot_on_the_stand_in(served, clip, name):
    model, preprocess, tokenizer = clip
    suite = suite_from_config(
        {"name": "hubprobe", "tasks": [name], "protocols": ["zero_shot", "linear_probe", "k_shot"]}
    )
    assert [t.name for t in suite.tasks] == [name, f"{name}@linear_probe", f"{name}@k_shot"]
    results = evaluate_suite(suite, model, preprocess, tokenizer, "cpu", served, batch_size=16)
    by_name = {r.task: r for r in results}
    assert all(r.status == "ok" for r in results), [(r.task, r.error) for r in results]
    n_classes = len(load_task(name).classes)
    for result in results:
        assert result.n == n_classes * PER_CLASS["test"]
        assert 0.0 <= result.main_value <= 1.0 and math.isclose(result.chance, 1 / n_classes)
    probe = by_name[f"{name}@linear_probe"]
    for result in (probe, by_name[f"{name}@k_shot"]):  # both splits identified, at the commit read
        assert "data_identity" not in result.notes
        assert (
            result.data["train"]["hub_commit"]
            == result.data["hub_commit"]
            == by_name[name].data["hub_commit"]
        )
    assert f"all {n_classes * PER_CLASS['train']} train items" in probe.notes["probe"]
    assert probe.metrics.keys() >= {"balanced_accuracy", "accuracy"}
    shot = by_name[f"{name}@k_shot"]
    shots = load_task(name).shots
    assert shots == (1, 2, 4, 8, 16) and shot.notes["k_shot"].startswith(
        "balanced_accuracy is the mean at k=16"
    )
    for k in shots:
        assert 0.0 <= shot.metrics[f"balanced_accuracy@{k}shot"] <= 1.0
        assert shot.metrics[f"balanced_accuracy@{k}shot_std"] >= 0.0
    assert shot.main_value == shot.metrics[f"balanced_accuracy@{max(shots)}shot"]
    # 2 train items per class: for k > 2 every draw holds all of them, and the notes say so.
    assert shot.notes["k_shot_classes"] == (
        f"a class has only {PER_CLASS['train']} train items: for k > {PER_CLASS['train']} it gives all "
        "of them every draw"
    )
    # k >= 2: every draw is the whole train split, so the draws agree (metrics in [0, 1]: 1e-9 absolute).
    assert all(shot.metrics[f"balanced_accuracy@{k}shot_std"] < 1e-9 for k in shots if k >= 2)
