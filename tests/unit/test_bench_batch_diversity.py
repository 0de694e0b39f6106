"""bench/batch_diversity.py's measure on a small cluster-ordered corpus (figures: docs/benchmarks.md): the
key -> cluster map covers the corpus, a batch's count is its distinct clusters, and shards in flight raise
it where one shard at a time draws a batch from two or three clusters."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from bmca_clip.data.synthetic import write_corpus

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))  # the bench scripts import their neighbours, as run from bench/
        yield importlib.import_module("batch_diversity")


def test_distinct_clusters_per_batch_rise_with_shards_in_flight(bench, tmp_path):
    out = tmp_path / "synthetic"
    write_corpus(
        out,
        train_samples=360,
        samples_per_shard=30,
        eval_samples=6,
        min_size=24,
        max_size=32,
        cluster_ordered=True,
    )
    clusters = bench.cluster_map(out / "train")
    assert len(clusters) == 360 and set(clusters.values()) <= set(range(24))
    assert bench.distinct_per_batch([["a", "b", "c"], ["c"]], {"a": 1, "b": 1, "c": 5}) == [2, 1]

    measured = {
        s: bench.diversity(out / "train", clusters, shards_in_flight=s, buffer=12, batches=20, batch_size=16)
        for s in (1, 4)
    }
    (one_mean, one_min), (four_mean, four_min) = measured[1], measured[4]
    assert 1 <= one_min <= one_mean <= 16 and 1 <= four_min <= four_mean <= 16
    assert four_mean > one_mean + 1, measured  # 30-sample shards of 1-3 clusters each, read 4 at a time
