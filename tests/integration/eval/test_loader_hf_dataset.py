"""The hf_dataset loader (bmca_clip/eval/loaders/hf_dataset.py) on stand-in repos served by FakeHub: the test
split, every label encoding, label maps and filters, multiple_choice questions, masks and detection crops,
the split-file rules and the dataset fingerprint."""

from __future__ import annotations

import pytest

from bmca_clip.eval.datasets import build_dataset
from bmca_clip.eval.loaders.hf_dataset import _split_files
from bmca_clip.eval.tasks import TaskError
from tests.helpers.eval_fixtures import COLOR_NAMES
from tests.helpers.eval_hub_repos import (
    CHOLEC_MAP,
    CHOLEC_MASKS,
    SKIN_TEST,
    UBENCH_ROWS,
)
from tests.helpers.eval_loaders import PROMPTS, SKIN, UBENCH, centre_colours, task, to_tensor


@pytest.mark.parametrize(
    ("column", "extra", "classes", "expected"),
    [
        ("label", "", COLOR_NAMES, SKIN_TEST),  # ClassLabel ints
        ("seq", "  label_encoding: sequence_first\n", COLOR_NAMES, SKIN_TEST),  # MedMNIST_224's label
        ("dx", "  label_encoding: string\n", [f"{c} square" for c in COLOR_NAMES], SKIN_TEST),
        ("flag", "  label_encoding: bool\n", ["even", "odd"], [c % 2 for c in SKIN_TEST]),
    ],
)
def test_hf_dataset_reads_the_split_and_every_label_encoding(hub, tmp_path, column, extra, classes, expected):
    source = SKIN + f"  label_column: {column}\n" + extra
    dataset = build_dataset(
        task(tmp_path, "skin", source, f"classes: {classes}\n" + PROMPTS), tmp_path, to_tensor
    )
    assert dataset.labels == expected  # the test split only: the card's configs say data/test-*
    assert centre_colours(dataset) == [COLOR_NAMES[c] for c in SKIN_TEST]
    assert len(dataset.notes["hub_commit"]) == 40


def test_string_label_map_bool_label_map_filter_and_refs_convert(hub, tmp_path):
    mapped = (
        SKIN + "  label_column: dx\n  label_encoding: string\n  label_map: {red square: R, GREEN_SQUARE: G}\n"
    )
    mapped += "  filter: {organ: 0}\n"  # ClassLabel 0 = lung: the red and green rows
    dataset = build_dataset(
        task(tmp_path, "mapped", mapped, "classes: [R, G]\n" + PROMPTS), tmp_path, to_tensor
    )
    assert dataset.labels == [0, 1, 0, 1]
    flags = SKIN + "  label_column: flag\n  label_encoding: bool\n  label_map: {true: odd, false: even}\n"
    flags += "  filter: {label: [2, 3]}\n"
    dataset = build_dataset(
        task(tmp_path, "flags", flags, "classes: [odd, even]\n" + PROMPTS), tmp_path, to_tensor
    )
    assert dataset.labels == [1, 0, 1, 0]
    converted = SKIN + "  revision: refs/convert/parquet\n  label_column: label\n"
    dataset = build_dataset(task(tmp_path, "converted", converted), tmp_path, to_tensor)
    assert dataset.labels == [3, 2, 1]  # default/test/0000.parquet, found by the converter's layout


def test_ubench_filters_on_any_column_including_held_rows_without_a_dataset(hub, tmp_path):
    hussain = (
        UBENCH
        + "  label_column: label_name\n  label_encoding: string\n  filter: {dataset: hussain_et_al_2019}\n"
    )
    hussain += "  label_map: {negative-nilm: NILM, high-grade-hsil: HSIL}\n"
    dataset = build_dataset(
        task(tmp_path, "pap", hussain, "classes: [NILM, HSIL]\n" + PROMPTS), tmp_path, to_tensor
    )
    assert dataset.labels == [0, 1]
    held = UBENCH + "  label_column: label_name\n  label_encoding: string\n  filter: {stain: H2B-mCherry}\n"
    dataset = build_dataset(
        task(tmp_path, "held", held, "classes: [prophase, metaphase]\n" + PROMPTS), tmp_path, to_tensor
    )
    assert dataset.labels == [1, 0]  # rows 2 and 3 of the arrow shards, whose dataset is None
    with pytest.raises(TaskError, match=r"no row matches filter \{'stain': 'H2B'\}.*'H2B-mCherry', 2"):
        build_dataset(
            task(tmp_path, "none", held.replace("H2B-mCherry", "H2B"), "classes: [a]\n" + PROMPTS),
            tmp_path,
            to_tensor,
        )


def test_multiple_choice_items_and_null_questions(hub, tmp_path):
    source = UBENCH + "  questions_column: questions\n  question: stain\n"
    dataset = build_dataset(task(tmp_path, "stain", source, "", "multiple_choice"), tmp_path, to_tensor)
    kept = [i for i, row in enumerate(UBENCH_ROWS) if row[4]]
    assert len(dataset) == len(kept) and dataset.answers == [i % 3 for i in kept]
    assert dataset.questions[0] == "Which stain is shown?" and dataset.options[0][-1] == "none of the above"
    assert dataset.notes["skipped"] == "2 of 6 images have a null 'stain' question"
    modality = task(tmp_path, "modality", source.replace("stain", "modality"), "", "multiple_choice")
    assert build_dataset(modality, tmp_path, to_tensor).answers == [row[3] for row in UBENCH_ROWS]
    with pytest.raises(TaskError, match=r"no question 'domain'; the cell has \['modality', 'stain'\]"):
        build_dataset(
            task(tmp_path, "dom", source.replace("stain", "domain"), "", "multiple_choice"),
            tmp_path,
            to_tensor,
        )


def test_mask_presence_and_detection_crops(hub, tmp_path):
    source = "  loader: hf_dataset\n  repo_id: org/cholec\n  label_column: label\n  label_encoding: mask_presence\n"
    source += f"  label_map: {CHOLEC_MAP}\n"
    rest = f"classes: {list(CHOLEC_MAP.values())}\n" + PROMPTS
    dataset = build_dataset(task(tmp_path, "cholec", source, rest, "multilabel"), tmp_path, to_tensor)
    names = list(CHOLEC_MAP)
    expected = [[float(name in colours) for name in names] for colours in CHOLEC_MASKS]
    assert [dataset[i][1].tolist() for i in range(len(dataset))] == expected

    source = "  loader: hf_dataset\n  repo_id: org/parasites\n  label_column: objects\n"
    source += "  label_encoding: detection_crops\n  label_map: {1: Ascaris, 2: Taenia}\n"
    dataset = build_dataset(
        task(tmp_path, "eggs", source, "classes: [Ascaris, Taenia]\n" + PROMPTS), tmp_path, to_tensor
    )
    assert dataset.labels == [0, 1, 1]  # the category-0 superclass box is dropped
    assert [tuple(dataset[i][0].shape) for i in range(3)] == [(3, 32, 32), (3, 32, 32), (3, 16, 16)]
    assert centre_colours(dataset) == ["red", "blue", "blue"]
    assert "1 boxes not scored" in dataset.notes["dropped"] and "category 0" in dataset.notes["dropped"]


def test_fingerprints_follow_what_makes_the_items(hub, tmp_path):
    source = SKIN + "  label_column: label\n"
    first, again = (build_dataset(task(tmp_path, "fp", source), tmp_path, to_tensor) for _ in range(2))
    assert first.fingerprint() == again.fingerprint()
    fewer = build_dataset(task(tmp_path, "fp2", source + "  filter: {organ: 1}\n"), tmp_path, to_tensor)
    flags = build_dataset(
        task(
            tmp_path,
            "fp3",
            SKIN + "  label_column: flag\n  label_encoding: bool\n",
            "classes: [a, b]\n" + PROMPTS,
        ),
        tmp_path,
        to_tensor,
    )
    assert len({first.fingerprint(), fewer.fingerprint(), flags.fingerprint()}) == 3


def test_split_files_follow_the_card_then_the_hub_conventions(tmp_path):
    listing = ["README.md", "data/train-00000-of-00002.parquet", "data/test-00000-of-00001.parquet"]
    card = tmp_path / "README.md"
    card.write_text("no front matter")
    t = task(tmp_path, "t", SKIN + "  label_column: label\n")
    assert _split_files(t, listing, card) == ["data/test-00000-of-00001.parquet"]
    ubench = ["perception/0.1.0/dataset_info.json", "perception/0.1.0/ubench-test-00001-of-00007.arrow"]
    assert _split_files(t, ubench, card) == ubench[1:]
    configs = task(tmp_path, "c", SKIN + "  config_name: crc\n  label_column: label\n")
    assert _split_files(configs, ["crc/test-0.parquet", "data/test-0.parquet"], card) == [
        "crc/test-0.parquet"
    ]
    card.write_text("---\nconfigs:\n- config_name: a\n  data_files: x/*.parquet\n---\n")
    with pytest.raises(TaskError, match=r"config 'a' has no split 'test'; splits: \['train'\]"):
        _split_files(t, ["x/0.parquet"], card)
    card.write_text("")
    with pytest.raises(TaskError, match=r"no parquet/arrow files for split 'test'.*data files in the repo"):
        _split_files(t, ["data/train-0.parquet"], card)
