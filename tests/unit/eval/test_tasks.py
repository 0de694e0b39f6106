"""Task and suite YAMLs: the shipped ones load, and mistakes fail with the key and the allowed values."""

import re

import pytest

from bmca_clip.eval.tasks import (
    REPO_ROOT,
    TaskError,
    list_suites,
    list_tasks,
    load_suite,
    load_task,
)
from bmca_clip.eval.types import TASK_TYPES
from tests.helpers.eval_fixtures import COLOR_TASK_BODY, RETRIEVAL_TASK_BODY, write_task_yaml


def test_demo_suite_loads_its_three_tasks():
    suite = load_suite("demo")
    assert [t.name for t in suite.tasks] == ["synthetic_modality", "synthetic_color", "synthetic_retrieval"]
    modality = suite.tasks[0]
    assert modality.classes == (
        "fluorescence micrograph",
        "H&E histology slide",
        "chest x-ray",
        "ultrasound scan",
        "bar chart",
        "chemical structure",
    )
    assert suite.tasks[1].classes == ("red", "green", "blue", "yellow")
    assert suite.tasks[2].type == "retrieval" and suite.tasks[2].source.caption_column == "caption"
    assert "demo" in list_suites()


def test_every_shipped_task_loads_and_every_type_has_an_evaluator():
    for name in list_tasks():
        task = load_task(name)
        assert task.main_metric in task.metrics
    # One registry since issue 13: every type's scorer is its TaskType's `score` (was harness.EVALUATORS).
    assert all(callable(task_type.score) and callable(task_type.build) for task_type in TASK_TYPES.values())


def test_defaults_fill_metrics_and_add_auroc_for_binary_tasks(tmp_path):
    body = COLOR_TASK_BODY.replace("[red, green, blue, yellow]", "[normal, tumour]")
    task = load_task(write_task_yaml(tmp_path, "binary", body))
    assert task.metrics == ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
    assert task.source.split == "test"


def _assert_fails(tmp_path, body, *expected, name="t"):
    path = write_task_yaml(tmp_path, name, body)
    with pytest.raises(TaskError) as info:
        load_task(path)
    for text in (str(path), *expected):
        assert text in str(info.value)
    return str(info.value)


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    _assert_fails(tmp_path, COLOR_TASK_BODY + "promts: []\n", "'promts'", "allowed keys", "templates")
    body = COLOR_TASK_BODY.replace("  file: test.csv", "  files: test.csv")
    _assert_fails(tmp_path, body, "'source.files'", "image_column")


def test_unknown_type_names_allowed_types(tmp_path):
    body = COLOR_TASK_BODY.replace("type: classification", "type: segmentation")
    _assert_fails(
        tmp_path, body, "'type'", "segmentation", "classification, multiple_choice, multilabel, retrieval"
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("loader: csv", "loader: parquet", ("source.loader", "parquet", "csv")),
        ("label_encoding: int", "label_encoding: onehot", ("source.label_encoding", "int, string")),
        ("domain: synthetic", "domain: pathalogy", ("'domain'", "pathology")),
        ("main_metric: balanced_accuracy", "main_metric: f1", ("main_metric", "'f1'", "macro_f1")),
        ("main_metric: balanced_accuracy", "main_metric: auroc", ("auroc", "2 classes", "has 4")),
        ("main_metric: balanced_accuracy", "main_metric: top4_accuracy", ("top4_accuracy", "has 4")),
        ('"a {} square."', '"a {c} square."', ("templates", "positional {}")),
        ("  label_column: label\n", "", ("source.label_column", "required")),
    ],
)
def test_bad_values_name_key_and_allowed_values(tmp_path, old, new, expected):
    assert old in COLOR_TASK_BODY
    _assert_fails(tmp_path, COLOR_TASK_BODY.replace(old, new), *expected)


def test_retrieval_metric_names_are_checked(tmp_path):
    body = RETRIEVAL_TASK_BODY.replace("main_metric: text_to_image_R@1", "main_metric: recall@1")
    _assert_fails(tmp_path, body, "recall@1", "image_to_text_R@<k>", "text_to_image_R@<k>")


def test_name_must_match_file_and_label_map_must_name_classes(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("name: t\n" + COLOR_TASK_BODY)
    with pytest.raises(TaskError, match="must equal the file name 'other'"):
        load_task(path)
    body = COLOR_TASK_BODY.replace("label_encoding: int", "label_encoding: string\n  label_map: {R: rouge}")
    _assert_fails(tmp_path, body, "source.label_map", "rouge")


def test_unknown_task_names_it_and_the_available_ones(tmp_path):
    with pytest.raises(TaskError, match="unknown task 'no_such_task'.*synthetic_color"):
        load_task("no_such_task")
    suite = tmp_path / "mine.yaml"
    suite.write_text("name: mine\ntasks: [synthetic_color, synthetic_colour]\n")
    with pytest.raises(TaskError) as info:
        load_suite(suite)
    message = str(info.value)
    assert "synthetic_colour" in message and "synthetic_modality" in message and str(suite) in message


def test_task_error_is_a_value_error():
    assert issubclass(TaskError, ValueError)


HUB_TASK_BODY = """\
type: classification
domain: pathology
source:
  loader: hf_dataset
  repo_id: org/skin
  label_column: label
classes: [a, b, c, d, e, f]
templates: ["a {} image."]
"""


def test_hub_task_defaults_and_catalogue_fields(tmp_path):
    body = HUB_TASK_BODY + "n_expected: 1285\nverified: false\nunverified: [class names]\nnotes: duplicates\n"
    task = load_task(write_task_yaml(tmp_path, "hub", body))
    assert (
        task.source.label_encoding == "int" and task.source.revision is None and task.source.split == "test"
    )
    assert task.metrics == ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy")  # >= 6 classes
    assert (task.n_expected, task.verified, task.unverified, task.notes) == (
        1285,
        False,
        ("class names",),
        "duplicates",
    )
    zipped = (
        "type: classification\ndomain: radiology\nsource:\n  loader: zip_split_json\n  repo_id: o/r\n"
        "  archive: BTMRI.zip\n  split_file: split_BTMRI.json\nclasses: [a, b]\ntemplates: ['{}']\n"
    )
    assert load_task(write_task_yaml(tmp_path, "zipped", zipped)).source.label_encoding == "split_json"
    mc = (
        "type: multiple_choice\ndomain: microscopy\nsource:\n  loader: hf_dataset\n  repo_id: o/r\n"
        "  questions_column: questions\n  question: stain\n  filter: {dataset: [a, null]}\n"
    )
    task = load_task(write_task_yaml(tmp_path, "mc", mc))
    assert task.main_metric == "accuracy" and task.source.label_encoding is None
    _assert_fails(tmp_path, mc.replace("  question: stain\n", ""), "source.question", "required")
    assert task.source.filter == {"dataset": ["a", None]}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  repo_id: org/skin\n", "", ("source.repo_id", "required", "hf_dataset")),
        (
            "  repo_id: org/skin\n",
            "  repo_id: org/skin\n  archive: x.zip\n",
            ("source.archive", "zip_split_json"),
        ),
        ("loader: hf_dataset", "loader: hf_parquet", ("source.data_files", "required")),
        ("loader: hf_dataset", "loader: zip_split_json", ("source.label_column", "split_file")),
        (
            "  label_column: label\n",
            "  label_column: label\n  label_encoding: split_json\n",
            ("split_json", "allowed: int, string, bool, sequence_first, detection_crops"),
        ),
        (
            "  label_column: label\n",
            "  label_column: label\n  label_encoding: mask_presence\n",
            ("mask_presence", "does not fit"),
        ),
        (
            "  label_column: label\n",
            "  label_column: label\n  label_map: {A: z}\n",  # int labels: the data's class names -> class
            ("source.label_map", "['z']", "not in classes"),
        ),
        (
            "  label_column: label\n",
            "  label_column: label\n  filter: {organ: {a: 1}}\n",
            ("source.filter", "column: value"),
        ),
        (
            "  label_column: label\n",
            "  label_column: label\n  label_encoding: bool\n",
            ("classes", "needs 2 classes"),
        ),
        ("classes: [a, b, c, d, e, f]\n", "", ("'classes'", "non-empty list")),
        ("type: classification", "type: multiple_choice", ("'classes'", "not used by 'multiple_choice'")),
        ("type: classification", "type: retrieval", ("'classes'", "not used by 'retrieval'")),
        ("domain: pathology\n", "domain: pathology\nn_expected: -3\n", ("n_expected", "positive integer")),
        (
            "domain: pathology\n",
            "domain: pathology\nunverified: wds keys\n",
            ("unverified", "list of strings"),
        ),
    ],
)
def test_hub_sources_are_checked_per_loader_type_and_encoding(tmp_path, old, new, expected):
    assert old in HUB_TASK_BODY
    _assert_fails(tmp_path, HUB_TASK_BODY.replace(old, new), *expected)


def test_mask_presence_label_map_must_cover_every_class(tmp_path):
    body = (
        "type: multilabel\ndomain: surgery\nsource:\n  loader: hf_dataset\n  repo_id: o/r\n  label_column: mask\n"
        "  label_map: {'#ff0000': liver}\nclasses: [liver, fat]\ntemplates: ['{}']\n"
    )
    _assert_fails(tmp_path, body, "source.label_map", "['fat'] have no mask value")
    _assert_fails(tmp_path, body.replace("'#ff0000'", "'#ff0000', 3: fat, x"), "source.label_map")
    task = load_task(write_task_yaml(tmp_path, "ok", body.replace("liver}", "liver, '#00ff00': fat}")))
    assert task.source.label_encoding == "mask_presence" and task.main_metric == "mAP"


def test_suite_expect_tasks_is_checked(tmp_path):
    suite = tmp_path / "two.yaml"
    suite.write_text("name: two\ntasks: [synthetic_color, synthetic_modality]\nexpect_tasks: 40\n")
    with pytest.raises(TaskError, match="key 'expect_tasks': says 40 tasks, but the suite lists 2"):
        load_suite(suite)
    suite.write_text("name: two\ntasks: [synthetic_color, synthetic_modality]\nexpect_tasks: 2\n")
    assert load_suite(suite).expect_tasks == 2


def test_shipped_yamls_carry_the_task_audits_corrections():
    """/work/shared/TASK_AUDIT.md (b): the facts it found wrong, and no placeholder class names."""
    tasks = {name: load_task(name) for name in list_tasks()}
    # DataComp's wds of Camelyon17 stores png (HF viewer: __key__, cls, npy, png), not webp.
    assert tasks["camelyon17_wilds"].source.image_column.split(";")[0] == "png"
    assert {"webp", "png"} <= set(tasks["eyepacs_dr5_vtab"].source.image_column.split(";"))
    assert tasks["dermamnist7"].licence == "cc-by-nc-4.0"  # medmnist 3.0.2 info.py
    assert tasks["isic2019_dx8"].n_expected == 4650  # FLamby's test fold
    # µ-Bench's label_name holds snake_case strings: each subset maps them to its classes.
    for name, raw in [
        ("molecule_colocalization", "very_weak"),
        ("cell_cycle_jurkat", "g1"),
        ("hela_chromatin_phase", "early_anaphase"),
        ("golgi_morphology", "partly_disassembled"),
    ]:
        source = tasks[name].source
        assert source.label_encoding == "string" and raw in source.label_map, name
        assert set(source.label_map.values()) == set(tasks[name].classes), name
    placeholder = re.compile(r"unlisted|placeholder|class \d+$|\?", re.I)
    for task in tasks.values():
        assert not [c for c in task.classes if placeholder.search(c)], task.name
    notes = (REPO_ROOT / "docs/tasks.md").read_text()
    assert re.search(r"non-commercial[^\n]*DermaMNIST", notes, re.I)


def test_unverified_entries_name_a_known_fact(tmp_path):
    body = COLOR_TASK_BODY + "unverified: [class order (from the paper), n, licence]\n"
    assert load_task(write_task_yaml(tmp_path, "ok", body)).unverified[0] == "class order (from the paper)"
    _assert_fails(
        tmp_path, COLOR_TASK_BODY + "unverified: [vibes]\n", "'unverified'", "'vibes'", "class order"
    )
    # Classes may be left out only while they are unknown, and then the load lists what the data holds.
    no_classes = COLOR_TASK_BODY.replace("classes: [red, green, blue, yellow]\n", "")
    _assert_fails(tmp_path, no_classes, "'classes'", "non-empty list")
    unknown = no_classes.replace("label_encoding: int", "label_encoding: string")
    task = load_task(write_task_yaml(tmp_path, "unknown", unknown + "unverified: [class names]\n"))
    assert task.classes == () and task.metrics == ("accuracy", "balanced_accuracy", "macro_f1")
