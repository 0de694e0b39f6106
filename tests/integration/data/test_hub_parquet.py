"""A hub dataset of parquet files (a PMC-derived set as `datasets` pushes it) as a training source, mixed
with a BIOMEDICA-format tar source: listed through the hub listing code, read row group by row group with
Range requests, resumed exactly mid-file, and its errors (a missing column, a repo without parquet files)
one line each."""

from __future__ import annotations

import pytest

from bmca_clip.config import DataConfig, SourceConfig
from bmca_clip.data.filters import FilterConfig
from bmca_clip.data.hub import discover
from bmca_clip.errors import DataError
from tests.helpers.biomedica_hub import REPO_ID, TOKEN, write_repo
from tests.helpers.biomedica_hub import hub_source as _biomedica
from tests.helpers.biomedica_hub import stream_config as _cfg
from tests.helpers.hub import FakeHub
from tests.helpers.loaders import first_batch_keys, tiny_loader
from tests.helpers.parquet_hub import PARQUET_REPO_ID, write_parquet_repo


def _parquet(**kw) -> SourceConfig:
    return SourceConfig(**{"repo_id": PARQUET_REPO_ID, "format": "parquet", "split": "train", **kw})


def _read(cfg: DataConfig, n_batches: int, state=None, batch_size: int = 6):
    """The keys of n batches, and the loader's state and counters after them."""
    loader = tiny_loader(cfg, batch_size=batch_size, state=state, train=True)
    batches = first_batch_keys(loader, n_batches)
    return batches, loader.state_dict(), loader.counters()


def _serve_both(hub, tmp_path) -> None:
    write_repo(tmp_path / "bmca", {f"commercial/{i:06d}.tar": 15 for i in range(3)})
    hub.add_dataset(REPO_ID, tmp_path / "bmca")
    write_parquet_repo(tmp_path / "pq", [20, 17, 9])
    hub.add_dataset(PARQUET_REPO_ID, tmp_path / "pq")


def test_the_listing_keeps_the_split_s_parquet_files(hub, tmp_path):
    _serve_both(hub, tmp_path)
    manifest = discover(_parquet(), tmp_path / "cache")
    assert [p for p, _ in manifest.files] == [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)]
    everything = discover(_parquet(split=None), tmp_path / "cache")
    assert len(everything.files) == 4  # the validation file too, in a manifest of its own


def test_a_mixed_biomedica_and_parquet_run_killed_and_resumed_equals_the_uninterrupted_one(hub, tmp_path):
    """Two streams (num_workers=2), sources mixed by weight: 7 batches, a state_dict, 9 more == 16 in one
    go, the resumed loader restarting inside a parquet file (position = file number + rows taken)."""
    _serve_both(hub, tmp_path)
    sources = {"biomedica": _biomedica(weight=1.0), "pmc_oa": _parquet(weight=2.0)}
    cfg = _cfg(tmp_path, sources, num_workers=2, resampled=True, shards_in_flight=1)  # (shard, taken)
    full, full_state, counters = _read(cfg, 16)
    first, state, _ = _read(cfg, 7)
    rest, rest_state, _ = _read(cfg, 9, state=state)
    assert first + rest == full
    assert rest_state["positions"] == full_state["positions"]
    assert state["commits"]["pmc_oa"] == full_state["commits"]["pmc_oa"] is not None
    mid_file = [pos for p in state["positions"].values() for pos in p["sources"][1:] if pos[1] > 0]
    assert mid_file, state  # the resume really starts inside a parquet file
    keys = [k for batch in full for k in batch]
    assert any(k.startswith("commercial_") for k in keys) and any(k.startswith("train-") for k in keys)
    assert not any(k.startswith("validation-") for k in keys)  # split=train only
    assert counters["drawn/biomedica"] + counters["drawn/pmc_oa"] == counters["decoded"] == len(keys)
    ranges = [r for r in hub.requests if r["path"].endswith(".parquet") and "Range" in r["headers"]]
    assert ranges  # parquet files are read in ranges (footer, row groups), not downloaded whole first


@pytest.mark.filterwarnings("ignore:data.filter.fields.license")  # not a BIOMEDICA field: warned, by design
def test_the_parquet_source_applies_the_caption_and_column_filters(hub, tmp_path):
    """A metadata filter over one of the table's own columns (`license`), and the caption filter."""
    _serve_both(hub, tmp_path)
    keep = FilterConfig(fields={"license": ["CC BY"]}, min_caption_chars=5)
    batches, _, counters = _read(_cfg(tmp_path, {"pmc_oa": _parquet()}, filter=keep), 3)
    rows = [int(k.rsplit(":", 1)[1]) for batch in batches for k in batch]
    assert all(row % 2 == 1 for row in rows)  # the helper licenses odd rows CC BY
    assert counters["filtered/field:license"] > 0


def test_a_missing_column_is_one_line_naming_the_source_and_the_columns(hub, tmp_path):
    _serve_both(hub, tmp_path)
    cfg = _cfg(tmp_path, {"pmc_oa": _parquet(caption_column="text")})
    with pytest.raises(DataError) as err:
        _read(cfg, 1)
    message = str(err.value)
    assert "\n" not in message and "data.sources.pmc_oa" in message and "'text'" in message
    assert "image, caption, license" in message and "data.sources.pmc_oa.caption_column" in message


def test_a_repo_without_parquet_files_is_one_line(hub, tmp_path):
    write_repo(tmp_path / "bmca", {"commercial/000000.tar": 3})
    hub.add_dataset(PARQUET_REPO_ID, tmp_path / "bmca")
    with pytest.raises(DataError) as err:
        _read(_cfg(tmp_path, {"pmc_oa": _parquet()}), 1)
    message = str(err.value)
    assert "\n" not in message and message.startswith("data.sources.pmc_oa: ")
    assert "no .parquet files of split 'train'" in message and PARQUET_REPO_ID in message


def test_parquet_ranges_follow_the_hub_s_redirect_to_its_cdn(tmp_path):
    """On the real hub a parquet file's resolve URL answers 302 to a CDN: the Range header follows the
    redirect, the token does not."""
    write_parquet_repo(tmp_path / "pq", [12])
    with FakeHub(token=TOKEN, cdn_redirect=True) as hub, hub.use(token=TOKEN):
        hub.add_dataset(PARQUET_REPO_ID, tmp_path / "pq")
        batches, _, counters = _read(_cfg(tmp_path, {"pmc_oa": _parquet()}), 2)
    assert len({k for batch in batches for k in batch}) == 12 and counters["decoded"] == 12
    cdn = [r for r in hub.requests if r["path"].startswith("/cdn-lfs/")]
    assert any("Range" in r["headers"] for r in cdn)  # the first request, from byte 0, needs none
    assert cdn and not any("Authorization" in r["headers"] for r in cdn)


def test_parquet_reads_survive_transient_faults_and_skip_a_missing_file(hub, tmp_path):
    """A 429, a reset and an early end of the body on one file are retried (and resumed from the byte
    where they stopped); a 404 on another skips that file, counted, and the stream goes on to the next."""
    _serve_both(hub, tmp_path)
    hub.fail("data/train-00000-*", "429")
    hub.fail("data/train-00000-*", "reset")
    hub.fail("data/train-00000-*", "stall", seconds=0)
    hub.fail("data/train-00001-*", "404", times=100)  # gone for good
    batches, _, counters = _read(_cfg(tmp_path, {"pmc_oa": _parquet()}), 2, batch_size=29)  # two epochs
    expected = {f"train-00000-of-00003:{i:07d}" for i in range(20)}
    expected |= {f"train-00002-of-00003:{i:07d}" for i in range(9)}
    assert set(batches[0]) == set(batches[1]) == expected
    assert set(counters.shards_failed) == {"http_404"} and counters["retries"] >= 3  # file 0 never failed
