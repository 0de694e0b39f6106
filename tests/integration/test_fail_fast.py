"""Training checks that its data exists before it builds (or downloads) a model.

A missing shard folder, or a hub repo that cannot be listed without a cached manifest, must stop the run
with the data's error while the model is still untouched: a ViT-L-14 download is 1.7 GB.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bmca_clip.config import DataConfig, PretrainConfig, SourceConfig, to_object
from bmca_clip.errors import DataError
from bmca_clip.train import run as train_mod
from tests.helpers.config import REPO, compose_config, tiny_train_overrides
from tests.helpers.hub import FakeHub


@pytest.fixture
def no_model(monkeypatch):
    """Building the model fails the test: the data check must come first."""

    def built(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(train_mod, "build_model", built)


def _cfg(tmp_path, shards: str) -> PretrainConfig:
    quoted = f"'{shards}'"  # Hydra's override grammar reads braces unquoted
    overrides = tiny_train_overrides(tmp_path, tmp_path / "run", **{"data.train_shards": quoted})
    return to_object(compose_config("pretrain", overrides), PretrainConfig)


def test_missing_local_shards_stop_the_run_before_the_model_is_built(tmp_path, no_model):
    shards = str(tmp_path / "nowhere" / "{000000..000003}.tar")
    with pytest.raises(DataError, match=r"nowhere/000000\.tar does not exist"):
        train_mod.run(_cfg(tmp_path, shards))
    assert not list((tmp_path / "run").glob("config*.yaml"))  # a refused start records nothing


def test_an_unreachable_hub_without_a_cached_manifest_stops_before_the_model(tmp_path, no_model):
    cfg = _cfg(tmp_path, "unused")
    cfg.data = DataConfig(
        sources={
            "commercial": SourceConfig(repo_id="BIOMEDICA/biomedica_webdataset_24M", subset="commercial")
        },
        cache_dir=str(tmp_path / "no_manifest_here"),
        retries=1,
        timeout_s=2.0,
        num_workers=0,
    )
    with FakeHub() as hub, hub.use():
        hub.stop()  # a closed port: connection refused, as with no network
        with pytest.raises(
            DataError, match=r"data\.sources\.commercial: could not list .*no cached manifest"
        ):
            train_mod.run(cfg)


def test_train_py_names_the_missing_shards_and_never_opens_the_weights(tmp_path):
    """End to end: model.pretrained names a file that does not exist, so building the model first would
    fail on it; the error a user sees names the shards instead."""
    shards = str(tmp_path / "nowhere" / "{000000..000003}.tar")
    overrides = tiny_train_overrides(tmp_path, tmp_path / "run", **{"data.train_shards": f"'{shards}'"}) + [
        f"model.pretrained={tmp_path / 'weights_never_read.pt'}"
    ]
    proc = subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data.train_shards:") and "nowhere/000000.tar does not exist" in last, last
    assert "weights_never_read" not in proc.stderr
