"""The synthetic BIOMEDICA-shaped corpus: hub layout, sample format, eval CSVs, determinism, CLI, learnability."""

import csv
import datetime
import hashlib
import io
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from bmca_clip.data import biomedica as bm
from bmca_clip.data import synthetic as syn
from bmca_clip.data.synthetic_corpus import cluster_of
from bmca_clip.data.synthetic_figures import COLORS, FIGURE_TYPES

# Ground truth the brief fixes for each figure type: (primary concept, secondary concept).
EXPECTED_LABELS = {
    "fluorescence micrograph": ("Microscopy", "fluorescence microscopy"),
    "H&E histology slide": ("Microscopy", "light microscopy"),
    "chest x-ray": ("Clinical Imaging", "x-ray radiography"),
    "ultrasound scan": ("Clinical Imaging", "ultrasound"),
    "bar chart": ("Plots and Charts", "bar plots"),
    "chemical structure": ("Chemical Structures", "chemical structure"),
}
SMALL = dict(train_samples=120, samples_per_shard=25, eval_samples=48, seed=3, min_size=40, max_size=96)
WDS_BOOKKEEPING = {"__url__", "__local_path__"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, syn.write_corpus(out, **SMALL)


@pytest.fixture(scope="module")
def samples(corpus):
    """(subset, raw sample) for every training sample, read with plain webdataset and no decoding."""
    out, _ = corpus
    urls = sorted(str(p) for p in (out / "train").glob("*/*.tar"))
    return [(Path(s["__url__"]).parent.name, s) for s in wds.WebDataset(urls, shardshuffle=False)]


def parse_caption(text: str):
    """(figure type, colour, count) stated by a caption, or an AssertionError saying what is missing."""
    types = [t for t in FIGURE_TYPES if t.lower() in text.lower()]
    assert len(types) == 1, f"caption names {types} figure types: {text!r}"
    found = re.findall(r"\b([1-5]) (red|green|blue|yellow)\b", text)
    assert len(found) == 1, f"caption states no single '<count> <colour>': {text!r}"
    return types[0], found[0][1], int(found[0][0])


def read_csv(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        return next(reader), list(reader)


def test_constants_match_biomedica_md():
    assert len(bm.METADATA_FIELDS) == 25 == len(set(bm.METADATA_FIELDS))
    assert bm.METADATA_FIELDS[0] == "image_file_name" and bm.METADATA_FIELDS[-1] == "article_text"
    assert len(bm.PRIMARY_CONCEPTS) == 16 and "Plots and Charts" in bm.PRIMARY_CONCEPTS
    assert set(bm.HEAVY_FIELDS) <= set(bm.METADATA_FIELDS)
    assert set(bm.SUBSETS) == {"commercial", "noncommercial", "other"}
    assert all(primary in bm.PRIMARY_CONCEPTS for primary, _ in EXPECTED_LABELS.values())
    assert all(secondary in bm.SECONDARY_CONCEPTS for _, secondary in EXPECTED_LABELS.values())
    assert FIGURE_TYPES == tuple(EXPECTED_LABELS) and COLORS == ("red", "green", "blue", "yellow")


def test_shards_follow_the_hub_layout(corpus):
    out, summary = corpus
    for subset in bm.SUBSETS:
        names = sorted(p.name for p in (out / "train" / subset).iterdir())
        assert names and names == [f"{i:06d}.tar" for i in range(len(names))], (subset, names)
        assert summary["train"][subset]["shards"] == [str(out / "train" / subset / n) for n in names]
    counts = {subset: info["samples"] for subset, info in summary["train"].items()}
    assert sum(counts.values()) == SMALL["train_samples"]
    assert counts["commercial"] > counts["noncommercial"] > counts["other"] >= 1  # 73% / 22% / 5%


def test_samples_have_the_biomedica_format(samples):
    assert len(samples) == SMALL["train_samples"]
    keys = [s["__key__"] for _, s in samples]
    assert len(set(keys)) == len(keys)
    for subset, sample in samples:
        assert set(sample) - WDS_BOOKKEEPING == {"__key__", *bm.SAMPLE_KEYS}
        meta = json.loads(sample["json"].decode("utf-8"))
        assert list(meta) == list(bm.METADATA_FIELDS)
        assert sample["txt"].decode("utf-8").strip()
        with Image.open(io.BytesIO(sample["jpg"])) as img:
            assert img.format == "JPEG" and list(img.size) == meta["image_size"]
        assert meta["article_license"] in bm.SUBSETS[subset]
        assert all(label in bm.PRIMARY_CONCEPTS for label in meta["image_primary_label"])
        assert all(label in bm.SECONDARY_CONCEPTS for label in meta["image_secondary_label"])
        assert meta["image_panel_type"] in ("single", "multiple")
        assert meta["image_label_id"].isdigit() and 0 <= int(meta["image_label_id"]) < 2000
        assert re.fullmatch(r"PMC\d+", meta["article_accession_id"])
        assert sample["__key__"].startswith(meta["article_accession_id"] + "_fig")
        datetime.date.fromisoformat(meta["article_date"])
        assert meta["article_reference_count"] == len(meta["article_reference_list"])
        assert all(isinstance(meta[f], list) for f in ("article_mesh_terms", "article_keywords"))
        assert isinstance(meta["article_reference_ids"], list)
        assert len(meta["article_text"].split()) >= 150
        assert meta["image_hash"] == hashlib.md5(sample["jpg"]).hexdigest()


def test_captions_agree_with_labels(samples):
    seen = Counter()
    for _, sample in samples:
        figure_type, color, count = parse_caption(sample["txt"].decode("utf-8"))
        meta = json.loads(sample["json"])
        primary, secondary = EXPECTED_LABELS[figure_type]
        assert meta["image_primary_label"] == [primary] and meta["image_secondary_label"] == [secondary]
        seen.update([figure_type, color, count])
    assert all(seen[name] for name in (*FIGURE_TYPES, *COLORS, 1, 2, 3, 4, 5)), seen
    templates = {re.sub(r"\d", "#", s["txt"].decode()).split(" ")[0] for _, s in samples}
    assert len(templates) >= 5, f"captions are not varied: {templates}"


@pytest.mark.parametrize("name, classes", [("synthetic_modality", FIGURE_TYPES), ("synthetic_color", COLORS)])
def test_classification_eval_sets(corpus, name, classes):
    out, _ = corpus
    header, rows = read_csv(out / "eval" / name / "test.csv")
    assert header == ["image", "label"] and len(rows) == SMALL["eval_samples"]
    labels = Counter(int(label) for _, label in rows)
    assert set(labels) == set(range(len(classes))) and max(labels.values()) - min(labels.values()) <= 1
    for image, _ in rows:
        assert re.fullmatch(r"images/\d{6}\.jpg", image)
        with Image.open(out / "eval" / name / image) as img:
            img.load()


def test_retrieval_eval_set(corpus):
    out, _ = corpus
    header, rows = read_csv(out / "eval" / "synthetic_retrieval" / "test.csv")
    assert header == ["image", "caption"]
    by_image = {}
    for image, text in rows:
        by_image.setdefault(image, []).append(text)
    assert len(by_image) == SMALL["eval_samples"]
    for image, texts in by_image.items():
        assert len(texts) == 2 and texts[0] != texts[1]
        assert parse_caption(texts[0]) == parse_caption(texts[1])  # both describe the same figure
        with Image.open(out / "eval" / "synthetic_retrieval" / image) as img:
            img.load()


def test_eval_images_are_held_out(corpus, samples):
    out, _ = corpus
    train = {hashlib.md5(s["jpg"]).digest() for _, s in samples}
    evals = {hashlib.md5(p.read_bytes()).digest() for p in (out / "eval").glob("*/images/*.jpg")}
    assert len(evals) == 3 * SMALL["eval_samples"] and not train & evals


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    args = dict(train_samples=30, samples_per_shard=8, eval_samples=6, min_size=24, max_size=48)
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        syn.write_corpus(tmp_path / name, seed=seed, **args)
    first, again, other = (_hashes(tmp_path / name) for name in "abc")
    assert first == again and len(first) > 10
    assert first.keys() == other.keys() and all(first[k] != other[k] for k in first)


def test_refuses_to_write_over_an_existing_corpus(corpus):
    out, _ = corpus
    with pytest.raises(FileExistsError, match="train"):
        syn.write_corpus(out, **SMALL)


def test_cli_writes_a_corpus(tmp_path):
    cmd = [sys.executable, "-m", "bmca_clip.data.synthetic", "--out", str(tmp_path)]
    cmd += ["--train-samples", "50", "--samples-per-shard", "20", "--eval-samples", "12"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train/commercial" in done.stdout
    assert sorted(p.name for p in (tmp_path / "train" / "commercial").iterdir()) == [
        "000000.tar",
        "000001.tar",
    ]
    assert len(read_csv(tmp_path / "eval" / "synthetic_retrieval" / "test.csv")[1]) == 24


def test_cli_bad_value_exits_with_the_flag_name(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "bmca_clip.data.synthetic",
        "--out",
        str(tmp_path),
        "--samples-per-shard",
        "0",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "--samples-per-shard" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "train").exists()


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--min-size", "20"], "--min-size"),
        (["--min-size", "100", "--max-size", "50"], "--max-size"),
        (["--train-samples", "2"], "--train-samples"),
        (["--eval-samples", "0"], "--eval-samples"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_main_rejects_bad_values(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        syn.main(["--out", str(tmp_path), *argv])
    assert exit_info.value.code != 0 and flag in str(exit_info.value.code)


def _features(source, field: int) -> np.ndarray:
    """Figure type (field 0): the 8x8 thumbnail. Colour (field 1): the saturation-weighted mean chroma, so
    that the black, pink or white background of the figure type does not swamp the object colour."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        pixels = np.asarray(img.convert("RGB").resize((8, 8), Image.BILINEAR), dtype=np.float32) / 255
    if field == 0:
        return pixels.ravel()
    chroma = (pixels - pixels.mean(-1, keepdims=True)).reshape(-1, 3)
    weight = np.abs(chroma).sum(-1, keepdims=True)
    return (chroma * weight).sum(0) / (weight.sum() + 1e-6)


@pytest.mark.parametrize(
    "name, classes, field", [("synthetic_modality", FIGURE_TYPES, 0), ("synthetic_color", COLORS, 1)]
)
def test_nearest_centroid_on_8px_images_beats_chance(corpus, samples, name, classes, field):
    """Learnable without a model: class centroids of the training images classify the held-out eval set."""
    out, _ = corpus
    feats = np.stack([_features(s["jpg"], field) for _, s in samples])
    truth = np.array([classes.index(parse_caption(s["txt"].decode())[field]) for _, s in samples])
    centroids = np.stack([feats[truth == k].mean(0) for k in range(len(classes))])
    _, rows = read_csv(out / "eval" / name / "test.csv")
    test = np.stack([_features(out / "eval" / name / image, field) for image, _ in rows])
    predicted = ((test[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = float((predicted == np.array([int(label) for _, label in rows])).mean())
    assert accuracy > 0.6, f"{name}: nearest-centroid accuracy {accuracy:.2f}, chance {1 / len(classes):.2f}"


def _subset_samples(out: Path, subset: str) -> list[dict]:
    shards = sorted(str(p) for p in (out / "train" / subset).glob("*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False))


def test_cluster_ordered_corpus_holds_the_same_samples_sorted_by_cluster(corpus, tmp_path):
    """--cluster-ordered writes each subset's samples (the same bytes) in cluster order, shard after shard,
    as BIOMEDICA's k-means-ordered shards; the plain corpus is not in that order."""
    args = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    assert syn.main([*args, f"--out={tmp_path}", "--cluster-ordered"]) == 0
    for subset in bm.SUBSETS:
        plain, ordered = _subset_samples(corpus[0], subset), _subset_samples(tmp_path, subset)
        digest = {s["__key__"]: hashlib.md5(s["jpg"] + s["txt"]).hexdigest() for s in plain}
        assert {s["__key__"]: hashlib.md5(s["jpg"] + s["txt"]).hexdigest() for s in ordered} == digest
        clusters = [cluster_of(json.loads(s["json"])) for s in ordered]
        assert clusters == sorted(clusters), subset
    plain = [cluster_of(json.loads(s["json"])) for s in _subset_samples(corpus[0], "commercial")]
    assert plain != sorted(plain) and len(set(plain)) > 12


def test_classification_sets_have_a_balanced_train_split_held_out_from_test_and_training(corpus, samples):
    out, summary = corpus
    train = {hashlib.md5(s["jpg"]).digest() for _, s in samples}
    tests = {hashlib.md5(p.read_bytes()).digest() for p in (out / "eval").glob("*/images/*.jpg")}
    for name, n_classes in (("synthetic_modality", 6), ("synthetic_color", 4)):
        header, rows = read_csv(out / "eval" / name / "train.csv")
        assert header == ["image", "label"] and len(rows) == SMALL["eval_samples"]
        assert summary["eval"][name]["train_csv"] == str(out / "eval" / name / "train.csv")
        counts = Counter(int(label) for _, label in rows)
        assert sorted(counts) == list(range(n_classes)) and max(counts.values()) - min(counts.values()) <= 1
        probe = {hashlib.md5((out / "eval" / name / image).read_bytes()).digest() for image, _ in rows}
        assert not probe & tests and not probe & train
    assert not (out / "eval" / "synthetic_retrieval" / "train.csv").exists()
