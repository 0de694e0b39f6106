"""A fixture of the filter tests (test_predicates.py, test_filter_config.py): the samples of a tiny synthetic
corpus, made once per module that asks for them."""

from __future__ import annotations

import pytest
import webdataset as wds

from bmca_clip.data.synthetic import write_corpus


@pytest.fixture(scope="module")
def synthetic_samples(tmp_path_factory) -> list[dict]:
    """Every sample of a tiny synthetic corpus, read back from its tar shards with webdataset."""
    out = tmp_path_factory.mktemp("filters") / "synthetic"
    summary = write_corpus(
        out, train_samples=60, samples_per_shard=30, eval_samples=6, min_size=24, max_size=48
    )
    urls = [url for subset in summary["train"].values() for url in subset["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False))
