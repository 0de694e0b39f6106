"""Hub loaders, label encodings and the multiple_choice / multilabel types on stand-in repos served by
FakeHub (tests/helpers/hub/), written by eval_fixtures.make_hub_repos in the layouts the real ones use."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http
from PIL import Image

from bmca_clip.eval.datasets import build_dataset
from bmca_clip.eval.harness import evaluate_suite, evaluate_task
from bmca_clip.eval.items import to_rgb
from bmca_clip.eval.loaders.hf_dataset import _split_files
from bmca_clip.eval.loaders.table import Table
from bmca_clip.eval.tasks import TaskError, load_task
from bmca_clip.eval.types.multilabel import average_precision, mean_average_precision, multilabel_metrics
from bmca_clip.eval.types.multiple_choice import choose, multiple_choice_metrics, option_texts
from tests.helpers.eval_fixtures import COLOR_NAMES, COLORS, tiny_clip, write_task_yaml
from tests.helpers.eval_hub_repos import (
    CHOLEC_MAP,
    CHOLEC_MASKS,
    SKIN_TEST,
    UBENCH_ROWS,
    make_hub_repos,
    write_ubench_labels,
    write_wds_repo,
)
from tests.helpers.hub import FakeHub

PROMPTS = 'templates: ["a {} image."]\n'
COLOR_CLASSES = f"classes: {COLOR_NAMES}\n" + PROMPTS


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Every stand-in repo on one FakeHub, huggingface_hub pointed at it (with an empty cache)."""
    repos = make_hub_repos(tmp_path_factory.mktemp("repos"))
    with FakeHub() as server, server.use():
        for key, (folder, revision) in repos.items():
            server.add_dataset(key.split("@")[0], folder, revision=revision)
        yield server


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


def to_tensor(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def task(tmp_path, name: str, source: str, rest: str = COLOR_CLASSES, kind: str = "classification"):
    """A task YAML in tmp_path: `source` is the indented body of its source block."""
    body = f"type: {kind}\ndomain: pathology\nsource:\n{source}{rest}"
    return load_task(write_task_yaml(tmp_path, name, body))


def centre_colours(dataset) -> list[str]:
    names = {v: k for k, v in COLORS.items()}
    out = []
    for i in range(len(dataset)):
        image = dataset[i][0]
        centre = tuple(int(round(float(c) * 255)) for c in image[:, image.shape[1] // 2, image.shape[2] // 2])
        out.append(names.get(centre, str(centre)))
    return out


SKIN = "  loader: hf_dataset\n  repo_id: org/skin\n"


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


def test_hf_parquet_reads_only_the_data_files_globs(hub, tmp_path):
    source = '  loader: hf_parquet\n  repo_id: org/nct\n  data_files: ["data/CRC_VAL_HE_7K-*.parquet"]\n'
    source += "  label_column: label\n"
    rest = f"classes: {[f'c{i}' for i in range(9)]}\n" + PROMPTS  # the stand-in's ClassLabel names
    dataset = build_dataset(task(tmp_path, "nct", source, rest), tmp_path, to_tensor)
    assert dataset.labels == [0, 8, 4, 5, 1]  # both shards in order, not the 100K subset nor the script


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


def test_wds_reads_shards_in_order_and_checks_classnames(hub, tmp_path):
    source = "  loader: wds\n  repo_id: org/wds\n  image_column: webp\n  label_column: cls\n"
    dataset = build_dataset(task(tmp_path, "wds", source), tmp_path, to_tensor)
    assert dataset.labels == [0, 1, 2, 3, 0]
    assert "checked" in dataset.notes["class_order"]  # against classnames.txt
    either = build_dataset(task(tmp_path, "either", source.replace("webp", "jpg;webp")), tmp_path, to_tensor)
    assert either.labels == dataset.labels  # webdataset's "a;b": the first key a sample has
    with pytest.raises(TaskError, match=r"has keys \['cls', 'webp'\]; expected an image key \['jpg'\]"):
        build_dataset(task(tmp_path, "wdsjpg", source.replace("webp", "jpg")), tmp_path, to_tensor)


UBENCH = "  loader: hf_dataset\n  repo_id: org/ubench\n"


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


def test_every_type_end_to_end_and_a_broken_task_does_not_stop_the_suite(hub, tmp_path, clip):
    model, preprocess, tokenizer = clip
    mask = "  loader: hf_dataset\n  repo_id: org/cholec\n  label_column: label\n"
    mask += f"  label_map: {CHOLEC_MAP}\n"
    tasks = [
        task(tmp_path, "broken", SKIN + "  label_column: diagnosis\n"),
        task(tmp_path, "skin", SKIN + "  label_column: label\n", COLOR_CLASSES + "n_expected: 100\n"),
        task(
            tmp_path,
            "mc",
            UBENCH + "  questions_column: questions\n  question: modality\n",
            "",
            "multiple_choice",
        ),
        task(tmp_path, "ml", mask, f"classes: {list(CHOLEC_MAP.values())}\n" + PROMPTS, "multilabel"),
        task(tmp_path, "pairs", SKIN + "  caption_column: dx\n", "", "retrieval"),
    ]
    results = evaluate_suite(tasks, model, preprocess, tokenizer, "cpu", tmp_path, batch_size=4)
    broken, *rest = results
    assert broken.status == "failed" and "task 'broken'" in broken.error
    assert (
        "org/skin@" in broken.error
        and "no column(s) ['diagnosis']" in broken.error
        and "'dx'" in broken.error
    )
    for result in rest:
        assert result.status == "ok", result.error
        values = [v for v in result.metrics.values() if v is not None]
        assert values and all(0.0 <= v <= 1.0 for v in values)
    skin, mc, ml, pairs = rest
    assert skin.notes["n_expected"] == "loaded 8 items; the task expects 100"
    assert (
        mc.n == 6
        and set(mc.metrics) == {"accuracy", "balanced_accuracy"}
        and mc.chance == pytest.approx(0.25)
    )
    assert set(ml.metrics) == {"mAP"} and "blood" in ml.notes["mAP"]
    assert pairs.n == 8


def test_offline_without_a_cache_gives_the_download_command(tmp_path, clip, monkeypatch):
    model, preprocess, tokenizer = clip
    nct = '  loader: hf_parquet\n  repo_id: org/nct\n  data_files: ["data/CRC_VAL_HE_7K-*.parquet"]\n'
    nct += "  label_column: label\n"
    nct_task = task(tmp_path, "nct", nct, f"classes: {[f'c{i}' for i in range(9)]}\n" + PROMPTS)
    repos = make_hub_repos(tmp_path / "repos")
    with FakeHub() as server, server.use():
        server.add_dataset("org/nct", repos["org/nct"][0])
        assert build_dataset(nct_task, tmp_path, to_tensor).labels == [0, 8, 4, 5, 1]
        server.stop()
        _http.close_session()  # no kept-alive connection to the stopped server
        assert build_dataset(nct_task, tmp_path, to_tensor).labels == [0, 8, 4, 5, 1]  # from the cache
        skin = task(tmp_path, "skin", SKIN + "  label_column: label\n")
        result = evaluate_task(skin, model, preprocess, tokenizer, "cpu", tmp_path)
        cache = hf_constants.HF_HUB_CACHE
        assert result.status == "failed" and "task 'skin'" in result.error
        assert "hf download org/skin --repo-type dataset --revision main" in result.error
        assert f"--cache-dir {cache}" in result.error and "not in the cache" in result.error
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        result = evaluate_task(skin, model, preprocess, tokenizer, "cpu", tmp_path)
        assert result.status == "failed" and "hf download org/skin" in result.error


def test_the_printed_command_fills_the_cache_for_an_offline_run(hub, tmp_path, monkeypatch):
    ubench = task(
        tmp_path,
        "mc",
        UBENCH + "  questions_column: questions\n  question: modality\n",
        "",
        "multiple_choice",
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TaskError) as info:
        build_dataset(ubench, tmp_path, to_tensor)
    command = next(
        line.strip() for line in str(info.value).splitlines() if line.strip().startswith("hf download")
    )
    hf = Path(sys.executable).with_name("hf")  # the CLI huggingface_hub installs beside this python
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}  # HF_ENDPOINT points at the FakeHub (hub.use())
    subprocess.run([str(hf), *shlex.split(command)[1:]], env=env, check=True, capture_output=True)
    dataset = build_dataset(ubench, tmp_path, to_tensor)  # still offline: read from the cache
    assert dataset.answers == [row[3] for row in UBENCH_ROWS]


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


def test_wide_images_are_stretched_not_clipped():
    wide = Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16))
    assert wide.mode.startswith("I;16")
    assert np.asarray(to_rgb(wide))[..., 0].tolist() == [[0, 64], [128, 255]]


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


def test_multiple_choice_scores_by_hand():
    questions = ["q", "q", "q", "r"]
    options = [["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"], ["x", "a"]]
    texts, index = option_texts(questions, options)
    assert texts == ["q a", "q b", "q c", "r x", "r a"] and index[3] == [3, 4]  # each text encoded once
    text_feats = torch.eye(5)
    image_feats = torch.tensor(
        [[0.9, 0.1, 0, 0, 0], [0, 0.2, 0.8, 0, 0], [0.5, 0.5, 0, 0, 0], [0, 0, 0, 0.1, 0.7]]
    )  # item 2 ties a and b: the earlier option wins
    preds = choose(image_feats, text_feats, index, chunk=3)
    assert preds.tolist() == [0, 2, 0, 1]
    answers = torch.tensor([0, 1, 0, 0])
    answer_texts = [o[a] for o, a in zip(options, answers.tolist(), strict=True)]
    scores = multiple_choice_metrics(["accuracy", "balanced_accuracy"], preds, answers, answer_texts)
    # correct: items 0 and 2; by answer: "a" 2/2, "b" 0/1, "x" 0/1
    assert scores.metrics == {"accuracy": pytest.approx(0.5), "balanced_accuracy": pytest.approx(1 / 3)}


def test_average_precision_and_map_by_hand():
    # ranked: pos, neg, pos, neg -> precision at the positives 1 and 2/3 -> AP (1 + 2/3) / 2
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([1, 0, 1, 0])) == pytest.approx(
        5 / 6
    )
    # tied scores are one threshold: pos and neg tied first -> precision 1/2 at recall 1
    assert average_precision(torch.tensor([0.5, 0.5, 0.1]), torch.tensor([1, 0, 0])) == pytest.approx(0.5)
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.7, 0.9, 0.1], [0.1, 0.2, 0.0]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    # class 0 ranks pos, neg, pos, neg: 5/6; class 1 ranks neg, pos, pos, neg: (1/2 + 2/3) / 2; c has no positive
    value, note = mean_average_precision(scores, targets, ["a", "b", "c"])
    ap_b = (1 / 2 + 2 / 3) / 2
    assert value == pytest.approx((5 / 6 + ap_b) / 2) and "['c']" in note
    result = multilabel_metrics(["mAP"], scores, torch.zeros_like(targets))
    assert result.metrics == {"mAP": None} and "no class has a positive" in result.notes["mAP"]


def test_table_column_errors_name_the_file_and_the_columns_found(tmp_path):
    table = Table("org/skin@abc:data/test.parquet", {"dx": ["a"]}, {}, [0])
    with pytest.raises(
        TaskError, match=r"task 't': org/skin@abc:data/test.parquet: no column 'label'.*\['dx'\]"
    ):
        table.column(task(tmp_path, "t", SKIN + "  label_column: label\n"), "label_column")


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
