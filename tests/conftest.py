"""Shared fixtures: a small synthetic BIOMEDICA corpus and Hydra composition of our real configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import bmca_clip.model  # noqa: F401  registers bmca-tiny / bmca-small with open_clip
from bmca_clip.config import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def compose_config(config_name: str, overrides: list[str] | None = None):
    """Compose conf/<config_name>.yaml with overrides, as the entry points do."""
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name, overrides=overrides or [])


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus (train shards in the hub layout + the three eval sets), made once."""
    from bmca_clip.data.synthetic import write_corpus

    out = tmp_path_factory.mktemp("data") / "synthetic"
    write_corpus(out, train_samples=1200, samples_per_shard=100, eval_samples=60, seed=0, max_size=96)
    return out


def tiny_train_overrides(corpus: Path, out_dir: Path, **extra) -> list[str]:
    """Overrides for a fast CPU run of the tiny model on the corpus."""
    values = {
        "model": "bmca-tiny",
        "data": "local",
        "data.train_shards": str(corpus / "train"),
        "data.num_workers": 0,
        "data.shuffle_buffer": 100,
        "data.shuffle_initial": 20,
        "train.batch_size": 16,
        "train.steps": 6,
        "train.device": "cpu",
        "train.log_every": 1,
        "optim.warmup_steps": 2,
        "checkpoint.every_steps": 3,
        "checkpoint.keep_last": 5,
        "logger.progress_bar": False,
        "output_dir": str(out_dir),
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def global_batch(n: int, seed: int = 1, image_size: int = 32, context: int = 32) -> dict:
    """A fixed random batch for bmca-tiny, the same in every process."""
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn(n, 3, image_size, image_size, generator=g),
        "texts": torch.randint(1, 49000, (n, context), generator=g),
    }
