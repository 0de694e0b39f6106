"""The shipped task YAMLs on stand-ins of their real data, served by FakeHub, and what `unverified` makes a
load do: class orders checked against the names the data holds (bmca_clip/eval/verify.py), refused with the
values found when they cannot be."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from bmca_clip.eval.datasets import build_dataset
from bmca_clip.eval.harness import evaluate_suite
from bmca_clip.eval.tasks import TaskError, load_task
from tests.helpers.eval_fixtures import COLOR_NAMES
from tests.helpers.eval_hub_repos import (
    SKIN_TEST,
    write_ubench_labels,
    write_wds_repo,
)
from tests.helpers.eval_loaders import COLOR_CLASSES, PROMPTS, SKIN, task, to_tensor
from tests.helpers.hub import FakeHub

# --- the shipped task YAMLs on stand-ins of their real data, and what `unverified` makes a load do ---

CAMELYON_NAMES = ["lymph node", "lymph node containing metastatic tumor tissue"]  # classnames.txt, 57 bytes
COLOC = [("colocalization_benchmark", "none", raw) for raw in ("very_weak", "weak", "moderate", "strong")]
EULENBERG = [("eulenberg_et_al_2017_brightfield", "none", raw) for raw in ("g1", "s", "g2", "prophase")]
EULENBERG += [
    ("eulenberg_et_al_2017_brightfield", "none", raw) for raw in ("metaphase", "anaphase", "telophase")
]
HELD_H2B = ["interphase", "prophase", "prometaphase", "metaphase", "early_anaphase", "late_anaphase"]
HELD_H2B += ["telophase", "apoptosis"]


def _shipped(hub: FakeHub, name: str, folder: Path, monkeypatch):
    """The shipped task YAML `name`, its repo served from folder at the YAML's repo_id and revision. The
    cache is the test's own: stand-ins of one pinned commit differ from test to test."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(folder.parent / "hf-cache"))
    shipped = load_task(name)
    revision = shipped.source.revision
    pinned = revision is not None and len(revision) == 40
    hub.add_dataset(shipped.source.repo_id, folder, commit=revision if pinned else None)
    return shipped


def test_camelyon17_reads_the_png_key_of_datacomps_wds(hub, tmp_path, monkeypatch):
    assert len(("\n".join(CAMELYON_NAMES) + "\n").encode()) == 57  # the size of the real classnames.txt
    folder = write_wds_repo(tmp_path / "camelyon", [[0, 1, 1], [0]], CAMELYON_NAMES, image_key="png")
    camelyon = _shipped(hub, "camelyon17_wilds", folder, monkeypatch)
    dataset = build_dataset(camelyon, tmp_path, to_tensor)
    assert dataset.labels == [0, 1, 1, 0]
    assert "checked" in dataset.notes["class_order"]


@pytest.mark.parametrize(
    ("name", "rows", "expected"),
    [
        ("molecule_colocalization", COLOC, [0, 1, 2, 3]),
        ("cell_cycle_jurkat", EULENBERG, [0, 1, 2, 3, 4, 5, 6]),
        (
            "hela_chromatin_phase",
            [(None, "H2B-mCherry", raw) for raw in [*HELD_H2B, "binucleate"]],
            list(range(9)),
        ),
    ],
)
def test_ubench_snake_case_label_names_go_through_the_label_map(
    hub, tmp_path, monkeypatch, name, rows, expected
):
    rows = [*rows, ("empiar_sbfsem", "none", "cardiac_muscle")]  # another subset, filtered out
    shipped = _shipped(hub, name, write_ubench_labels(tmp_path / name, rows), monkeypatch)
    assert shipped.source.label_map is not None
    dataset = build_dataset(shipped, tmp_path, to_tensor)
    assert dataset.labels == expected


def test_a_guessed_class_that_the_data_lacks_fails_listing_the_values_it_holds(hub, tmp_path, monkeypatch):
    # hela's 9th class is a guess (binucleate): data whose 9th value is another string must not score.
    rows = [(None, "H2B-mCherry", raw) for raw in [*HELD_H2B, "binucleated_cell", "interphase"]]
    shipped = _shipped(hub, "hela_chromatin_phase", write_ubench_labels(tmp_path / "held", rows), monkeypatch)
    with pytest.raises(TaskError) as info:
        build_dataset(shipped, tmp_path, to_tensor)
    message = str(info.value)
    assert "\n" not in message and "task 'hela_chromatin_phase'" in message
    assert "'binucleated_cell' (1)" in message and "'interphase' (2)" in message


def test_a_task_whose_classes_are_unknown_fails_listing_the_values_the_data_holds(hub, tmp_path, monkeypatch):
    rows = [("nirschl_unpub_fluorescence", "none", raw) for raw in ("actin", "microtubules", "actin")]
    shipped = _shipped(
        hub, "fluorescent_structures", write_ubench_labels(tmp_path / "tirf", rows), monkeypatch
    )
    assert shipped.classes == ()
    with pytest.raises(TaskError) as info:
        build_dataset(shipped, tmp_path, to_tensor)
    message = str(info.value)
    assert "\n" not in message and "classes are not known" in message
    assert "'actin' (2), 'microtubules' (1)" in message


def test_int_labels_whose_classlabel_names_disagree_with_the_yaml_are_refused(hub, tmp_path):
    swapped = ["green", "red", "blue", "yellow"]
    source = SKIN + "  label_column: label\n"
    with pytest.raises(TaskError) as info:
        build_dataset(
            task(tmp_path, "swapped", source, f"classes: {swapped}\n" + PROMPTS), tmp_path, to_tensor
        )
    message = str(info.value)
    assert "\n" not in message and str(COLOR_NAMES) in message and str(swapped) in message
    # The data's names may be mapped to the task's own wording; the order is still checked.
    worded = [f"a {c} square" for c in COLOR_NAMES]
    label_map = (
        "  label_map: {" + ", ".join(f"{c}: {w}" for c, w in zip(COLOR_NAMES, worded, strict=True)) + "}\n"
    )
    rest = f"classes: {worded}\n" + PROMPTS
    assert (
        build_dataset(task(tmp_path, "worded", source + label_map, rest), tmp_path, to_tensor).labels
        == SKIN_TEST
    )
    with pytest.raises(TaskError, match="not the task's classes in order"):
        build_dataset(
            task(tmp_path, "worded2", source + label_map, f"classes: {worded[::-1]}\n" + PROMPTS),
            tmp_path,
            to_tensor,
        )
    wds = "  loader: wds\n  repo_id: org/wds\n  image_column: webp\n  label_column: cls\n"
    with pytest.raises(
        TaskError, match=r"classnames.txt.*\['red', 'green', 'blue', 'yellow'\].*\['a', 'b', 'c'\]"
    ):
        build_dataset(task(tmp_path, "wds3", wds, "classes: [a, b, c]\n" + PROMPTS), tmp_path, to_tensor)


def test_an_unverified_class_order_needs_class_names_in_the_data(hub, tmp_path):
    # MedMNIST_224-like: the labels are bare integers, nothing in the data names the classes.
    source = SKIN + "  label_column: seq\n  label_encoding: sequence_first\n"
    assert build_dataset(task(tmp_path, "seq", source), tmp_path, to_tensor).labels == SKIN_TEST
    unsure = COLOR_CLASSES + "unverified: [class order (from a paper's table)]\n"
    with pytest.raises(TaskError) as info:
        build_dataset(task(tmp_path, "unsure", source, unsure), tmp_path, to_tensor)
    message = str(info.value)
    assert "\n" not in message and "class order" in message and "0 (2), 1 (2), 2 (2), 3 (2)" in message


def test_a_suite_goes_on_past_a_task_refused_for_its_class_order(hub, tmp_path, monkeypatch, clip):
    model, preprocess, tokenizer = clip
    folder = write_wds_repo(tmp_path / "camelyon", [[0, 1], [1, 0]], CAMELYON_NAMES, image_key="png")
    camelyon = _shipped(hub, "camelyon17_wilds", folder, monkeypatch)
    swapped = task(
        tmp_path,
        "swapped",
        SKIN + "  label_column: label\n",
        "classes: [green, red, blue, yellow]\n" + PROMPTS,
    )
    refused, scored = evaluate_suite(
        [swapped, camelyon], model, preprocess, tokenizer, "cpu", tmp_path, batch_size=4
    )
    assert refused.status == "failed" and "['green', 'red', 'blue', 'yellow']" in refused.error
    assert scored.status == "ok" and scored.n == 4 and scored.main_value is not None
