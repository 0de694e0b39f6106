"""The repository's paths and our real Hydra configs composed for a test, as the entry points compose them."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

import bmca_clip.model  # noqa: F401  registers bmca-tiny / bmca-small with open_clip
from bmca_clip.config import register_configs

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def compose_config(config_name: str, overrides: list[str] | None = None):
    """Compose conf/<config_name>.yaml with overrides, as the entry points do."""
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name, overrides=overrides or [])


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
