"""CSV/TSV tables and local parquet files as training sources: bad rows skipped and counted under the
tar shards' skip reasons, a table cut into chunks read by seeking (quoted captions across lines included)
and resumed exactly mid-chunk, and one-line errors for a missing table or column."""

from __future__ import annotations

import open_clip
import pytest

from bmca_clip.config import DataConfig, SourceConfig
from bmca_clip.data import tables
from bmca_clip.data.decode import PilTransform
from bmca_clip.data.filters import FilterConfig
from bmca_clip.data.loader import build_train_loader
from bmca_clip.errors import ConfigError, DataError
from tests.helpers.loaders import first_batch_keys, tiny_loader
from tests.helpers.parquet_hub import jpeg, write_csv_table, write_parquet_repo


def _csv(table: str, **kw) -> SourceConfig:
    columns = {"image_column": "filepath", "caption_column": "title"}  # open_clip_train's csv names
    return SourceConfig(shards=table, format="csv", **(columns | kw))


def _read(sources: dict, n_batches: int, batch_size: int = 5, state=None, **kw):
    values = dict(num_workers=0, shuffle_buffer=1, shuffle_initial=1, resampled=False) | kw
    loader = tiny_loader(DataConfig(sources=sources, **values), batch_size=batch_size, state=state)
    batches = first_batch_keys(loader, n_batches)
    return batches, loader.state_dict(), loader.counters()


def test_a_csv_row_with_a_missing_image_or_an_empty_caption_is_skipped_and_counted(tmp_path):
    """Ten good rows and, among them, one whose image file is not there and one with a blank caption: one
    pass (shuffle buffer 1: table order) yields the ten good rows and counts the two under their reasons."""
    rows = [(f"images/{i}.jpg", f"a figure, number {i}") for i in range(10)]
    rows.insert(3, (None, "an image nobody copied"))
    rows.insert(7, ("images/blank.jpg", "   "))
    table = write_csv_table(tmp_path, rows)  # a .tsv: tab-separated without being told
    batches, _, counters = _read({"roco": _csv(table)}, 1, batch_size=10)
    assert batches[0] == [f"train:{i:07d}" for i in range(12) if i not in (3, 7)]
    assert counters["skipped/missing_image"] == 1 and counters["skipped/empty_caption"] == 1
    assert counters["decoded"] == 10 and counters["drawn/roco"] == 12


def test_a_csv_table_is_read_in_chunks_and_resumes_mid_chunk(tmp_path, monkeypatch):
    """Chunks of 4 rows (one caption spans lines inside quotes, one holds the separator): every row once
    per pass, and 3 batches + a resume + 5 more == 8 batches in one go, shuffled and with two streams."""
    monkeypatch.setattr(tables, "ROWS_PER_CHUNK", 4)
    rows = [(f"images/{i}.jpg", f"figure {i}") for i in range(17)]
    rows[5] = ("images/5.jpg", "panel A, then\npanel B")
    table = write_csv_table(tmp_path, rows, separator=",")
    one_pass, _, _ = _read({"t": _csv(table)}, 1, batch_size=17)
    assert sorted(one_pass[0]) == [f"train:{i:07d}" for i in range(17)]

    kw = dict(shuffle_buffer=3, shuffle_initial=2, num_workers=2, resampled=True)
    full, full_state, _ = _read({"t": _csv(table)}, 8, batch_size=3, **kw)
    first, state, _ = _read({"t": _csv(table)}, 3, batch_size=3, **kw)
    rest, rest_state, _ = _read({"t": _csv(table)}, 5, batch_size=3, state=state, **kw)
    assert first + rest == full and rest_state["positions"] == full_state["positions"]


def test_csv_and_local_parquet_sources_mix_by_weight(tmp_path):
    table = write_csv_table(tmp_path / "csv", [(f"images/{i}.jpg", f"figure {i}") for i in range(30)])
    write_parquet_repo(tmp_path / "pq", [30])
    sources = {
        "csv": _csv(table, weight=1.0),
        "pq": SourceConfig(shards=str(tmp_path / "pq"), format="parquet", split="train", weight=3.0),
    }
    batches, _, counters = _read(sources, 4, batch_size=10, shuffle_buffer=8, resampled=True)
    keys = [k for b in batches for k in b]
    assert not any(k.startswith("validation") for k in keys)  # split=train, as on the hub
    assert counters["drawn/csv"] + counters["drawn/pq"] == 40 and counters["drawn/pq"] > counters["drawn/csv"]


def test_a_missing_table_or_column_is_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        _read({"roco": _csv(str(tmp_path / "nowhere.csv"))}, 1)
    assert str(err.value) == (
        f"data.sources.roco: table {tmp_path / 'nowhere.csv'} does not exist; set data.sources.roco.shards "
        "to the CSV/TSV file"
    )
    table = write_csv_table(tmp_path, [("images/0.jpg", "figure")])
    with pytest.raises(DataError) as err:
        _read({"roco": _csv(table, caption_column="caption")}, 1)
    message = str(err.value)
    assert "\n" not in message and "no column 'caption' (it has: filepath, title)" in message
    assert "data.sources.roco.caption_column" in message


def test_a_csv_source_names_a_file_not_a_repo():
    with pytest.raises(ConfigError, match="null for format=csv"):
        SourceConfig(repo_id="pmc/oa", format="csv")
    with pytest.raises(ConfigError, match="choose one of: webdataset, parquet, csv"):
        SourceConfig(shards="x", format="jsonl")


def test_a_parquet_row_without_image_bytes_is_a_missing_image(tmp_path):
    images = [[{"bytes": None, "path": "/home/someone/0.jpg"}, None, {"bytes": jpeg(1), "path": None}]]
    write_parquet_repo(tmp_path, [3], image=images, caption=[["a", "b", "c"]], license=[["x"] * 3])
    source = SourceConfig(shards=str(tmp_path), format="parquet", split="train")
    batches, _, counters = _read({"pq": source}, 1, batch_size=1)
    assert batches == [["train-00000-of-00001:0000002"]] and counters["skipped/missing_image"] == 2


def test_a_source_with_use_filters_false_passes_a_concept_filter_untouched(tmp_path):
    """A table has no BIOMEDICA labels: under data.filter.include_primary its rows would all be dropped as
    missing_metadata, unless the source opts out."""
    table = write_csv_table(tmp_path, [(f"images/{i}.jpg", f"figure {i}") for i in range(6)])
    keep = FilterConfig(include_primary=["Microscopy"])
    batches, _, counters = _read({"t": _csv(table, use_filters=False)}, 1, batch_size=6, filter=keep)
    assert len(batches[0]) == 6 and "filtered/missing_metadata" not in counters
    with pytest.raises(DataError, match="gave no usable sample"):
        _read({"t": _csv(table)}, 1, batch_size=6, filter=keep, max_empty_shards=2)


def test_one_parquet_file_shared_by_four_streams_splits_its_rows_without_overlap(tmp_path):
    """Fewer files than streams (2 ranks x 2 workers, one file): each stream takes every 4th row, so the
    ranks get equal batches of disjoint rows, as with scarce tar shards."""
    write_parquet_repo(tmp_path, [24])
    source = {"pq": SourceConfig(shards=str(tmp_path), format="parquet", split="train")}
    cfg = DataConfig(sources=source, num_workers=2, shuffle_buffer=4, shuffle_initial=2, resampled=False)
    per_rank = []
    for rank in (0, 1):
        loader = build_train_loader(
            cfg,
            PilTransform(open_clip.image_transform(32, is_train=False)),
            open_clip.get_tokenizer("bmca-tiny"),
            batch_size=3,
            seed=0,
            rank=rank,
            world_size=2,
        )
        batches = iter(loader)
        per_rank.append([k for _ in range(4) for k in next(batches)["keys"]])
    assert len(per_rank[0]) == len(per_rank[1]) == 12
    assert sorted(per_rank[0] + per_rank[1]) == [f"train-00000-of-00001:{i:07d}" for i in range(24)]


def test_a_table_whose_images_are_all_missing_stops_naming_where_they_were_looked_for(tmp_path):
    rows = [(None, f"figure {i}") for i in range(30)]  # the paths name files that were never copied
    table = write_csv_table(tmp_path, rows)
    with pytest.raises(DataError) as err:
        _read({"roco": _csv(table)}, 1, max_bad_after=20)
    message = str(err.value)
    assert "\n" not in message and "rows had no image (first: UnusableSample: no image file" in message
    assert str(tmp_path / "images" / "missing_") in message and "image_column" in message
