"""The contrastive loss, built by open_clip from our config and where this process runs."""

from __future__ import annotations

from open_clip.loss import ClipLoss, SigLipLoss

from bmca_clip.config import LossConfig
from bmca_clip.dist import DistInfo


def build_loss(cfg: LossConfig, dist: DistInfo):
    """ClipLoss (softmax, features gathered across ranks) or SigLipLoss (sigmoid, exchanged pairwise).

    Both are called as loss(image_features, text_features, logit_scale, logit_bias)."""
    if cfg.name == "siglip":
        return SigLipLoss(rank=dist.rank, world_size=dist.world_size)
    return ClipLoss(
        local_loss=cfg.local_loss,
        gather_with_grad=cfg.gather_with_grad,
        cache_labels=True,
        rank=dist.rank,
        world_size=dist.world_size,
    )
