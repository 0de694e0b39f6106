"""Streaming from the hub, against a local server that speaks its HTTP API (tests/helpers/hub/).

Discovery and its fallbacks, the token's path (sent to the hub, never logged or saved), every fault kind
survived with the right counters, equal batches per rank with scarce shards, the local shard cache, and
train.py end to end.
"""

from __future__ import annotations

import subprocess
import sys

import open_clip
import pytest
from huggingface_hub import HfApi

from bmca_clip.config import DataConfig
from bmca_clip.data.decode import PilTransform
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.hub import discover
from bmca_clip.data.loader import build_train_loader
from bmca_clip.errors import DataError
from tests.helpers.biomedica_hub import REPO_ID, TOKEN, write_repo
from tests.helpers.biomedica_hub import hub_source as _source
from tests.helpers.biomedica_hub import stream_config as _cfg
from tests.helpers.config import REPO


def _read(cfg: DataConfig, n_batches: int, batch_size: int = 10, **kw):
    loader = build_train_loader(
        cfg,
        PilTransform(open_clip.image_transform(32, is_train=True)),
        open_clip.get_tokenizer("bmca-tiny"),
        batch_size=batch_size,
        seed=0,
        **kw,
    )
    keys = []
    for batch in loader:
        keys += batch["keys"]
        if len(keys) >= n_batches * batch_size:
            return keys, loader.counters()


def test_discovery_lists_once_caches_a_manifest_and_falls_back(hub, tmp_path, monkeypatch):
    write_repo(tmp_path / "repo", {f"commercial/{i:06d}.tar": 3 for i in range(5)} | {"other/000000.tar": 3})
    commit = hub.add_dataset(REPO_ID, tmp_path / "repo")
    manifest = discover(_source(), tmp_path / "cache")
    assert [p for p, _ in manifest.files] == [f"commercial/{i:06d}.tar" for i in range(5)]
    assert manifest.commit == commit and all(f"/resolve/{commit}/commercial/" in u for u in manifest.urls())
    api_calls = [r for r in hub.requests if r["path"].startswith("/api/")]
    assert len(api_calls) <= 3  # repo info + one tree listing: never one call per shard

    def unreachable(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(HfApi, "repo_info", unreachable)  # the hub goes away: the cached manifest stands in
    assert discover(_source(), tmp_path / "cache", HttpPolicy(retries=1)).files == manifest.files
    fallback = discover(
        _source(pattern="commercial/{000000..000002}.tar"), tmp_path / "empty", HttpPolicy(retries=1)
    )
    assert [p for p, _ in fallback.files] == [
        "commercial/000000.tar",
        "commercial/000001.tar",
        "commercial/000002.tar",
    ]
    with pytest.raises(Exception, match="data.sources.<name>.pattern"):
        discover(_source(), tmp_path / "empty2", HttpPolicy(retries=1))


def test_stream_sends_the_token_to_the_hub_and_mixes_subsets(hub, tmp_path):
    write_repo(
        tmp_path / "repo", {"commercial/000000.tar": 30, "commercial/000001.tar": 30, "other/000000.tar": 30}
    )
    hub.add_dataset(REPO_ID, tmp_path / "repo")
    cfg = _cfg(tmp_path, {"commercial": _source(weight=3.0), "other": _source("other", weight=1.0)})
    keys, counters = _read(cfg, 6)
    share = sum(k.startswith("commercial") for k in keys) / len(keys)
    assert 0.55 < share < 0.95  # 3:1 by sample probability (60 draws)
    resolves = [r for r in hub.requests if "/resolve/" in r["path"]]
    assert resolves and all(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in resolves)
    assert counters["decoded"] == len(keys)


TRANSIENT = [("429", {"retry_after": 0}), ("503", {}), ("500", {}), ("reset", {}), ("stall", {"seconds": 3})]
PERMANENT = [
    ("404", {}, "shards_failed/http_404"),
    ("html", {}, "shards_failed/not_a_tar"),
    ("truncate", {"fraction": 0.4}, "shards_failed/unreadable_tar"),
]


def _faulty_run(hub, tmp_path, kind=None, **kw):
    shards = {f"commercial/{i:06d}.tar": 20 for i in range(3)}
    keys = write_repo(tmp_path / "repo", shards)
    hub.add_dataset(REPO_ID, tmp_path / "repo")
    if kind:
        hub.fail("commercial/000001.tar", kind, times=1, **kw)
    got, counters = _read(_cfg(tmp_path, {"commercial": _source()}), 6)
    return keys, got, counters


@pytest.mark.parametrize("kind, kw", TRANSIENT)
def test_transient_faults_are_retried_and_invisible_in_the_data(hub, tmp_path, kind, kw):
    _, clean, _ = _faulty_run(hub, tmp_path)
    _, got, counters = _faulty_run(hub, tmp_path, kind, **kw)
    assert got == clean  # the same samples in the same order, as if nothing had happened
    assert counters.get("retries", 0) >= 1
    assert not any(k.startswith("shards_failed/") for k in counters)


@pytest.mark.parametrize("kind, kw, counter", PERMANENT)
def test_permanent_faults_skip_the_shard_and_are_counted(hub, tmp_path, kind, kw, counter):
    keys, got, counters = _faulty_run(hub, tmp_path, kind, **kw)
    assert counters.get(counter) == 1, counters
    good = set(keys["commercial/000000.tar"]) | set(keys["commercial/000002.tar"])
    assert set(got) - set(keys["commercial/000001.tar"]) <= good
    if kind == "truncate":  # the samples before the cut are still used
        assert set(got) & set(keys["commercial/000001.tar"])


def test_a_hub_that_only_fails_stops_with_a_clear_message(hub, tmp_path):
    write_repo(tmp_path / "repo", {f"commercial/{i:06d}.tar": 5 for i in range(2)})
    hub.add_dataset(REPO_ID, tmp_path / "repo")
    hub.fail("commercial/*", "404", times=1000)
    with pytest.raises(DataError, match="shards in a row gave no usable sample.*HTTP 404"):
        _read(_cfg(tmp_path, {"commercial": _source()}), 1)


@pytest.mark.parametrize("n_shards", [1, 3])
def test_every_rank_and_worker_gets_data_when_shards_are_scarce(tmp_path, n_shards):
    """2 ranks x 2 workers = 4 streams over 1 or 3 shards: all yield, and no sample is read twice."""
    keys = write_repo(tmp_path / "repo", {f"s/{i:06d}.tar": 24 for i in range(n_shards)})
    seen = []
    for rank in (0, 1):
        cfg = DataConfig(
            train_shards=str(tmp_path / "repo"),
            num_workers=2,
            resampled=False,
            shuffle_buffer=4,
            shuffle_initial=2,
        )
        got, _ = _read(cfg, 2, batch_size=4, rank=rank, world_size=2)
        seen.append(got[:8])
    flat = [k for part in seen for k in part]
    assert all(len(part) == 8 for part in seen)
    assert len(set(flat)) == len(flat)  # streams sharing a shard split it by sample
    assert set(flat) <= {k for ks in keys.values() for k in ks}


def test_train_py_streams_from_the_hub_and_never_leaks_the_token(hub, tmp_path, corpus):
    hub.add_dataset(REPO_ID, corpus / "train")
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "data=biomedica",
            "model=bmca-tiny",
            "train.steps=3",
            "train.batch_size=8",
            "train.device=cpu",
            "train.log_every=1",
            "data.num_workers=1",
            "data.shuffle_buffer=16",
            "data.shuffle_initial=4",
            f"data.cache_dir={tmp_path / 'cache'}",
            "logger.progress_bar=false",
            f"output_dir={out}",
            "hydra.verbose=true",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints" / "step_00000003.pt").exists()
    assert "source commercial" in proc.stderr  # the listing was logged...
    assert TOKEN not in proc.stdout + proc.stderr  # ...and the token never was
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert any(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in hub.requests)


def test_local_shard_cache_serves_repeated_epochs_within_its_size_limit(hub, tmp_path):
    write_repo(tmp_path / "repo", {f"commercial/{i:06d}.tar": 10 for i in range(3)})
    hub.add_dataset(REPO_ID, tmp_path / "repo")
    cfg = _cfg(tmp_path, {"commercial": _source()}, cache_limit_gb=1.0)
    first, _ = _read(cfg, 3)  # one epoch: 30 samples, every shard streamed once and cached
    streamed = sum("/resolve/" in r["path"] for r in hub.requests)
    again, counters = _read(cfg, 6)  # a new run: two epochs, all from the cache
    assert again[:30] == first
    assert sum("/resolve/" in r["path"] for r in hub.requests) == streamed
    assert counters["shards_from_cache"] >= 3
    shard_size = (tmp_path / "repo" / "commercial" / "000000.tar").stat().st_size

    small = _cfg(
        tmp_path,
        {"commercial": _source()},
        cache_limit_gb=1.5 * shard_size / 2**30,
        cache_dir=str(tmp_path / "small"),
    )
    _read(small, 3)
    assert len(list((tmp_path / "small" / "shards").glob("*.tar"))) == 1  # the limit holds one shard
