"""The harness end to end on stand-in data written here: classifier weights, metrics, failures, reports."""

import hashlib
import json

import numpy as np
import open_clip
import pytest
import torch

from bmca_clip.eval.datasets import build_dataset
from bmca_clip.eval.encoders import zero_shot_classifier
from bmca_clip.eval.harness import evaluate_suite, evaluate_task
from bmca_clip.eval.report import format_table, make_provenance, write_summary, write_task_json
from bmca_clip.eval.tasks import TaskError, load_suite, load_task
from tests.helpers.eval_fixtures import (
    COLOR_TASK_BODY,
    COLORS,
    RETRIEVAL_TASK_BODY,
    make_color_task_data,
    make_retrieval_data,
    tiny_clip,
    write_csv,
    write_image,
    write_task_yaml,
)
from tests.helpers.numeric import assert_close_scaled

TEMPLATES = ["a {}.", "a figure showing a {}.", "an image of a {}."]
CLASSES = ["chest x-ray", "H&E histology slide", "bar chart"]


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


def test_zero_shot_classifier_matches_open_clip_and_a_hand_reference(clip):
    model, _, tokenizer = clip
    ours = zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES, "cpu", batch_size=2)
    theirs = open_clip.build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES, device="cpu")
    with torch.no_grad():
        columns = []
        for name in CLASSES:
            feats = model.encode_text(tokenizer([t.format(name) for t in TEMPLATES]))
            mean = torch.nn.functional.normalize(feats, dim=-1).mean(dim=0)
            columns.append(mean / mean.norm())
    reference = torch.stack(columns, dim=1)
    assert ours.shape == (32, len(CLASSES))
    assert_close_scaled(ours, theirs, rel=1e-6)
    assert_close_scaled(ours, reference, rel=1e-6)


class ColorOracle(torch.nn.Module):
    """A stand-in CLIP that knows colours: image -> one-hot of the nearest COLOR at its centre,
    text -> one-hot of the colour word in it. Scored through the harness it must be perfect."""

    def __init__(self):
        super().__init__()
        self.palette = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255

    def encode_image(self, images, normalize=False):
        centre = images[:, :, images.shape[2] // 2, images.shape[3] // 2]
        nearest = torch.cdist(centre, self.palette).argmin(dim=1)
        return torch.nn.functional.one_hot(nearest, len(COLORS)).float()

    def encode_text(self, tokens, normalize=False):
        return torch.nn.functional.one_hot(tokens[:, 0], len(COLORS)).float()


def color_tokenizer(texts):
    return torch.tensor([[next(i for i, c in enumerate(COLORS) if c in t)] for t in texts])


def to_tensor(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.fixture
def workspace(tmp_path):
    """data/ with a colour classification set and a retrieval set; tasks/ and suite/ YAMLs for them."""
    data, tasks = tmp_path / "data", tmp_path / "tasks"
    make_color_task_data(data / "colors")
    make_retrieval_data(data / "pairs")
    write_task_yaml(tasks, "colors", COLOR_TASK_BODY)
    write_task_yaml(tasks, "pairs", RETRIEVAL_TASK_BODY)
    (tmp_path / "suite").mkdir()
    return tmp_path


def test_a_perfect_model_scores_one_everywhere(workspace):
    model = ColorOracle()
    model.train()
    suite = load_suite_from(workspace, ["colors", "pairs"])
    results = evaluate_suite(
        suite, model, to_tensor, color_tokenizer, "cpu", workspace / "data", batch_size=5
    )
    assert model.training, "the model's train/eval mode must be restored"
    colors, pairs = results
    assert colors.status == "ok" and colors.n == 12 and colors.chance == pytest.approx(1 / 4)
    assert colors.metrics == {"accuracy": 1.0, "balanced_accuracy": 1.0, "macro_f1": 1.0}
    assert pairs.status == "ok" and pairs.n == 4
    assert pairs.metrics["image_to_text_R@1"] == 1.0 and pairs.metrics["text_to_image_R@1"] == 1.0
    assert pairs.metrics["text_to_image_R@10"] is None and "gallery of 4" in pairs.notes["text_to_image_R@10"]
    assert pairs.chance == pytest.approx(1 / 4)


def load_suite_from(root, names):
    (root / "suite" / "s.yaml").write_text(f"name: s\ntasks: {names}\n")
    return load_suite(root / "suite" / "s.yaml", suites_dir=root / "suite", tasks_dir=root / "tasks")


def test_tiny_clip_end_to_end_with_a_broken_task_that_does_not_stop_the_suite(workspace, clip):
    model, preprocess, tokenizer = clip
    bad = workspace / "data" / "bad"
    make_color_task_data(bad)
    write_csv(bad / "test.csv", ["image", "label"], [["images/0_0.png", 0], ["images/0_1.jpg", 7]])
    write_task_yaml(workspace / "tasks", "bad", COLOR_TASK_BODY.replace("path: colors", "path: bad"))
    nolabel = workspace / "data" / "nolabel"
    make_color_task_data(nolabel)
    write_csv(nolabel / "test.csv", ["image", "class"], [["images/0_0.png", 0]])
    write_task_yaml(workspace / "tasks", "nolabel", COLOR_TASK_BODY.replace("path: colors", "path: nolabel"))
    suite = load_suite_from(workspace, ["bad", "colors", "nolabel", "pairs"])

    results = evaluate_suite(suite, model, preprocess, tokenizer, "cpu", workspace / "data", batch_size=4)

    bad_r, colors, nolabel_r, pairs = results
    assert bad_r.status == "failed" and "'bad'" in bad_r.error and "'label'" in bad_r.error
    assert "line 3" in bad_r.error and "out of range" in bad_r.error
    assert (
        nolabel_r.status == "failed"
        and "'nolabel'" in nolabel_r.error
        and "no column 'label'" in nolabel_r.error
    )
    assert bad_r.metrics == {} and bad_r.n is None
    for result in (colors, pairs):
        assert result.status == "ok" and result.error is None
        values = [v for v in result.metrics.values() if v is not None]
        assert values and all(0.0 <= v <= 1.0 for v in values)
    assert set(colors.metrics) == {"accuracy", "balanced_accuracy", "macro_f1"}


def test_reports_hold_the_schema_and_every_task_and_model(workspace, clip):
    model, preprocess, tokenizer = clip
    suite = load_suite_from(workspace, ["colors", "pairs"])
    results = evaluate_suite(suite, model, preprocess, tokenizer, "cpu", workspace / "data")
    missing = evaluate_task(
        load_task("synthetic_color"), model, preprocess, tokenizer, "cpu", workspace / "nowhere"
    )
    checkpoint = workspace / "ckpt.pt"
    checkpoint.write_bytes(b"weights")
    provenance = make_provenance("test-tiny", "cpu", checkpoint=checkpoint)
    out = workspace / "out"
    for result in [*results, missing]:
        record = json.loads(write_task_json(result, out, provenance).read_text())
        for key in ("schema_version", "task", "type", "domain", "status", "main_metric", "metrics", "n"):
            assert key in record
        for key in ("classes", "templates", "error", "seconds", "provenance"):
            assert key in record
    assert record["status"] == "failed" and record["n"] is None
    assert record["provenance"]["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert set(record["provenance"]["versions"]) >= {"torch", "open_clip"}
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))

    table = format_table({"tiny-a": results, "tiny-b": [*results[:1], missing]})
    for name in ("colors", "pairs", "tiny-a", "tiny-b", "mean", "25.00"):
        assert name in table
    md, csv_path = write_summary({"tiny-a": results}, out)
    assert "colors" in md.read_text() and csv_path.read_text().startswith("model,task,")


def test_missing_data_folder_says_how_to_create_it(tmp_path, clip):
    model, preprocess, tokenizer = clip
    result = evaluate_task(load_task("synthetic_modality"), model, preprocess, tokenizer, "cpu", tmp_path)
    assert result.status == "failed"
    assert str(tmp_path / "synthetic/eval/synthetic_modality") in result.error
    assert f"python -m bmca_clip.data.synthetic --out {tmp_path}/synthetic" in result.error


def test_retrieval_dataset_groups_captions_by_image(tmp_path):
    make_retrieval_data(tmp_path / "pairs")
    task = load_task(write_task_yaml(tmp_path, "pairs", RETRIEVAL_TASK_BODY))
    dataset = build_dataset(task, tmp_path, to_tensor)
    assert len(dataset) == 4 and [len(c) for c in dataset.captions] == [2, 2, 2, 2]
    assert dataset.captions[1] == ["a green square.", "a figure with a green object."]
    assert dataset.text_to_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    image, index = dataset[3]
    assert image.shape == (3, 40, 40) and index == 3


def test_string_labels_by_name_or_label_map(tmp_path):
    folder = tmp_path / "colors"
    make_color_task_data(folder, per_class=1)
    write_csv(
        folder / "test.csv", ["image", "label"], [["images/0_0.png", "RED "], ["images/2_0.png", "Blue"]]
    )
    body = COLOR_TASK_BODY.replace("label_encoding: int", "label_encoding: string")
    dataset = build_dataset(load_task(write_task_yaml(tmp_path, "by_name", body)), tmp_path, to_tensor)
    assert dataset.labels == [0, 2]
    mapped = body.replace(
        "label_encoding: string", "label_encoding: string\n  label_map: {RED : red, Blue: blue}"
    )
    dataset = build_dataset(load_task(write_task_yaml(tmp_path, "mapped", mapped)), tmp_path, to_tensor)
    assert dataset.labels == [0, 2]
    write_csv(
        folder / "test.csv", ["image", "label"], [["images/0_0.png", "red"], ["images/2_0.png", "purple"]]
    )
    with pytest.raises(TaskError, match=r"line 3: unknown label 'purple'.*'yellow'"):
        build_dataset(load_task(tmp_path / "by_name.yaml"), tmp_path, to_tensor)


def test_missing_or_unreadable_image_names_the_file(tmp_path, clip):
    folder = tmp_path / "colors"
    write_image(folder / "images/ok.png", (255, 0, 0))
    (folder / "images/broken.png").write_bytes(b"not an image")
    task = load_task(write_task_yaml(tmp_path, "colors", COLOR_TASK_BODY))
    write_csv(folder / "test.csv", ["image", "label"], [["images/ok.png", 0], ["images/gone.png", 1]])
    with pytest.raises(TaskError, match=r"'colors'.*1 image file\(s\).*gone\.png"):
        build_dataset(task, tmp_path, to_tensor)
    write_csv(folder / "test.csv", ["image", "label"], [["images/ok.png", 0], ["images/broken.png", 1]])
    dataset = build_dataset(task, tmp_path, to_tensor)
    with pytest.raises(TaskError, match=r"'colors'.*cannot read image .*broken\.png"):
        dataset[1]
    # Through a DataLoader worker the message is the same line, not the worker's traceback.
    model, preprocess, tokenizer = clip
    result = evaluate_task(task, model, preprocess, tokenizer, "cpu", tmp_path, num_workers=1)
    assert result.status == "failed" and result.error.startswith("task 'colors': cannot read image")


def test_demo_suite_runs_on_the_synthetic_corpus(corpus, clip):
    """The shipped task YAMLs read what bmca_clip.data.synthetic writes (conftest's corpus fixture)."""
    model, preprocess, tokenizer = clip
    suite = load_suite("demo")
    results = evaluate_suite(suite, model, preprocess, tokenizer, "cpu", corpus.parent)
    assert [(r.task, r.status, r.error) for r in results] == [(t.name, "ok", None) for t in suite.tasks]
    assert all(r.n > 0 for r in results)
    pairs = build_dataset(suite.tasks[2], corpus.parent, preprocess)
    assert {len(c) for c in pairs.captions} == {2}
