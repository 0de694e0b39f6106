"""The contrastive loss, built by open_clip from our config and where this process runs."""

from __future__ import annotations

from open_clip.loss import ClipLoss

from bmca_clip.config import LossConfig
from bmca_clip.dist import DistInfo


def build_loss(cfg: LossConfig, dist: DistInfo) -> ClipLoss:
    return ClipLoss(
        local_loss=cfg.local_loss,
        gather_with_grad=cfg.gather_with_grad,
        cache_labels=True,
        rank=dist.rank,
        world_size=dist.world_size,
    )
