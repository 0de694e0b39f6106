"""Shared fixtures: a small synthetic BIOMEDICA corpus. Helpers the tests import live in tests/helpers/."""

from __future__ import annotations

from pathlib import Path

import pytest

import bmca_clip.model  # noqa: F401  registers bmca-tiny / bmca-small with open_clip


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus (train shards in the hub layout + the three eval sets), made once."""
    from bmca_clip.data.synthetic import write_corpus

    out = tmp_path_factory.mktemp("data") / "synthetic"
    write_corpus(out, train_samples=1200, samples_per_shard=100, eval_samples=60, seed=0, max_size=96)
    return out
