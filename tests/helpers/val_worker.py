"""Run by tests/integration/test_validation_distributed.py under `torchrun --nproc_per_node=2`: each rank
scores the held-out pairs of the test corpus with the same tiny model and writes what it got."""

import json
import sys
from pathlib import Path

import torch

import bmca_clip.model  # noqa: F401  registers bmca-tiny
from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.data.sources import resolve_sources
from bmca_clip.dist import init_distributed, shutdown
from bmca_clip.model import build_model
from bmca_clip.validation import build_validation
from tests.helpers.config import compose_config, tiny_train_overrides

# 21 pairs over 2 ranks: shares of 11 and 10 (+1 padding), in batches of 4: 3 forward passes on each rank
VAL = {"data.holdout": "noncommercial/000000.tar", "val.samples": 21, "val.batch_size": 4}


def scores(corpus: Path, out: Path, dist) -> dict:
    cfg = to_object(compose_config("pretrain", tiny_train_overrides(corpus, out, **VAL)), PretrainConfig)
    torch.manual_seed(0)
    bundle = build_model(cfg.model)
    validator = build_validation(cfg, resolve_sources(cfg.data, None), bundle, dist)
    return validator(bundle.model)


if __name__ == "__main__":
    corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist = init_distributed("cpu")
    try:
        result = scores(corpus, out, dist) | {"world_size": dist.world_size}
        (out / f"rank{dist.rank}.json").write_text(json.dumps(result))
    finally:
        shutdown()
