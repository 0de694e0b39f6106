"""AdamW parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from bmca_clip.config import OptimConfig

# Substrings of parameter names that never get weight decay: decaying a temperature, a position table or
# a norm's gain pulls it towards zero, which only hurts (CLIP, open_clip and timm all exclude them).
_NO_DECAY_NAMES = ("logit_scale", "logit_bias", "embedding", "cls_token", "pos_embed")


def decays(name: str, param: torch.Tensor) -> bool:
    """True for weight matrices; False for norms, biases, embeddings and the logit scale."""
    if param.ndim < 2 or name.endswith(".bias"):
        return False
    return not any(part in name for part in _NO_DECAY_NAMES)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if decays(n, p)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_factor(
    step: int, total_steps: int, cfg: OptimConfig, resumed_at: tuple[int, float] | None = None
) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then cosine or flat.

    `resumed_at=(s0, f0)`: a resume at step s0 changed train.steps, optim.schedule or optim.lr_min (see
    bmca_clip/train/resume.py). From s0 on the factor starts at f0, the one in force there (no jump), and then
    goes to lr_min/lr by a cosine half-wave ending at `total_steps` (cosine), or stays at f0 (constant).
    """
    floor = cfg.lr_min / cfg.lr
    if resumed_at is not None and step >= resumed_at[0]:
        start, factor = resumed_at
        if cfg.schedule == "constant":
            return factor
        progress = min(1.0, (step - start) / max(1, total_steps - start))
        return floor + (factor - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: OptimConfig,
    total_steps: int,
    resumed_at: tuple[int, float] | None = None,
    step: int = 0,
):
    """A LambdaLR positioned at `step` (the lr of that step is set on the optimizer). Its peak lr is each
    param group's `initial_lr`, so after a resume it is this config's optim.lr, not the checkpoint's."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg, resumed_at), last_epoch=step - 1
    )
