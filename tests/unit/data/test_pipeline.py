"""The training stream with bad input: corrupt images and empty captions are skipped and counted;
a missing shard path or a mostly broken corpus stops with a message that says what to do."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import open_clip
import pytest
import webdataset as wds
from PIL import Image

from bmca_clip.config import DataConfig
from bmca_clip.data.decode import PilTransform
from bmca_clip.data.filters import BalanceConfig, FilterConfig
from bmca_clip.data.loader import build_train_loader
from bmca_clip.data.sources import expand_shards
from bmca_clip.errors import DataError
from bmca_clip.train.log_line import checked_data_counters
from tests.helpers.config import REPO


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _shard(path, n_good: int, n_corrupt: int, n_empty: int) -> None:
    good = _jpeg()
    with wds.TarWriter(str(path)) as sink:
        for i in range(n_good):
            sink.write({"__key__": f"good{i:04d}", "jpg": good, "txt": "a red square"})
        for i in range(n_corrupt):
            sink.write({"__key__": f"bad{i:04d}", "jpg": good[: len(good) // 3], "txt": "truncated jpeg"})
        for i in range(n_empty):
            sink.write({"__key__": f"empty{i:04d}", "jpg": good, "txt": "   "})


def _loader(shards, **cfg):
    data = DataConfig(train_shards=str(shards), num_workers=0, shuffle_buffer=10, shuffle_initial=5, **cfg)
    return build_train_loader(
        data,
        PilTransform(open_clip.image_transform(32, is_train=True)),
        open_clip.get_tokenizer("bmca-tiny"),
        batch_size=4,
        seed=0,
    )


def test_corrupt_images_and_empty_captions_are_skipped_and_counted(tmp_path):
    _shard(tmp_path / "000000.tar", n_good=30, n_corrupt=5, n_empty=3)
    loader = _loader(tmp_path / "000000.tar", resampled=False)
    keys = []
    for batch in loader:
        keys += batch["keys"]
        if len(keys) >= 28:
            break
    assert all(k.startswith("good") for k in keys)
    counters = loader.counters()
    skipped = {k: v for k, v in counters.items() if k.startswith("skipped/")}
    assert sum(skipped.values()) >= 1 and counters["decoded"] >= 28
    assert set(skipped) <= {"skipped/truncated_image", "skipped/corrupt_image", "skipped/empty_caption"}


def test_mostly_broken_data_stops_training_with_a_clear_message(tmp_path):
    _shard(tmp_path / "000000.tar", n_good=20, n_corrupt=120, n_empty=0)
    loader = _loader(tmp_path / "000000.tar", max_bad_fraction=0.5)
    batches = iter(loader)
    with pytest.raises(DataError, match="could not be decoded"):
        for _ in range(50):
            next(batches)
            checked_data_counters(loader, 0.5)


def test_shard_specs_expand_folders_braces_and_joins(tmp_path):
    for name in ("000000.tar", "000001.tar", "000002.tar"):
        _shard(tmp_path / name, 1, 0, 0)
    assert len(expand_shards(str(tmp_path))) == 3
    assert expand_shards(f"{tmp_path}/{{000000..000001}}.tar") == [
        f"{tmp_path}/000000.tar",
        f"{tmp_path}/000001.tar",
    ]
    assert len(expand_shards(f"{tmp_path}/000000.tar::{tmp_path}/000002.tar")) == 2
    with pytest.raises(DataError, match="does not exist"):
        expand_shards(f"{tmp_path}/000009.tar")


def test_cli_missing_shards_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "model=bmca-tiny",
            "data=local",
            f"data.train_shards={tmp_path}/nothing",
            f"output_dir={tmp_path}/run",
            "train.device=cpu",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert f"error: data.train_shards: {tmp_path}/nothing does not exist" in proc.stderr
    assert "bmca_clip.data.synthetic" in proc.stderr and "Traceback" not in proc.stderr


def _labels_by_key(corpus) -> dict[str, list[str]]:
    urls = sorted(str(p) for p in (corpus / "train").rglob("*.tar"))
    return {
        s["__key__"]: json.loads(s["json"])["image_primary_label"]
        for s in wds.WebDataset(urls, shardshuffle=False)
    }


def _stream(corpus, n: int, **data_kw):
    data = DataConfig(
        train_shards=str(corpus / "train"), num_workers=0, shuffle_buffer=50, shuffle_initial=10, **data_kw
    )
    loader = build_train_loader(
        data,
        PilTransform(open_clip.image_transform(32, is_train=True)),
        open_clip.get_tokenizer("bmca-tiny"),
        batch_size=20,
        seed=0,
    )
    keys = []
    for batch in loader:
        keys += batch["keys"]
        if len(keys) >= n:
            return keys, loader.counters()


def test_concept_filter_keeps_only_the_listed_concepts_and_counts_the_rest(corpus):
    labels = _labels_by_key(corpus)
    keep = ["Clinical Imaging", "Microscopy"]
    keys, counters = _stream(corpus, 200, filter=FilterConfig(include_primary=keep))
    assert all(set(labels[k]) & set(keep) for k in keys)
    assert counters["filtered/primary_label"] > 0 and counters["kept"] >= 200


def test_concept_weights_give_the_expected_proportions(corpus):
    """Charts are 1/6 of the corpus; weight 0.2 (others 1) should leave 0.2/6 / (5/6 + 0.2/6) = 3.85%."""
    labels = _labels_by_key(corpus)
    before = sum("Plots and Charts" in labels[k] for k in labels) / len(labels)
    keys, counters = _stream(
        corpus, 600, balance=BalanceConfig(weights={"Plots and Charts": 0.2}, fixed_subset=False)
    )
    observed = sum("Plots and Charts" in labels[k] for k in keys) / len(keys)
    expected = before * 0.2 / (1 - before + before * 0.2)
    assert abs(observed - expected) < 0.03, (observed, expected)  # ~3.5 standard errors at n=600
    assert counters["filtered/balance"] > 0
