"""A fixed random batch for bmca-tiny, the same in every process (single-process and DDP tests compare it)."""

from __future__ import annotations

import torch


def global_batch(n: int, seed: int = 1, image_size: int = 32, context: int = 32) -> dict:
    """A fixed random batch for bmca-tiny, the same in every process."""
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn(n, 3, image_size, image_size, generator=g),
        "texts": torch.randint(1, 49000, (n, context), generator=g),
    }
