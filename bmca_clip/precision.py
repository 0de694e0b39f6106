"""Whether pure_bf16 can train at all at the configured learning rate, checked once before training.

With train.precision=pure_bf16 the weights themselves are bf16 (8 significant bits), so an optimizer
update smaller than half the gap to the neighbouring bf16 value rounds back to the old weight. An AdamW
step moves a weight by at most about lr (m/sqrt(v) is ~1 at most), so a weight w is stalled when
lr < half the gap below |w|: 2^(e-9) for |w| = m * 2^e with 0.5 < m < 1, and half that at exact powers
of two (LayerNorm gains start at 1.0). That is |w| * 2^-9 at a power of two and up to twice it elsewhere.

Measured on bmca-tiny at lr 1e-6 (tests/unit/test_precision.py): the share below is 98% of the weights, and 5
pure_bf16 steps change about 1% of the weights that fp32 changes. The share is a lower bound: Adam's step
is often well below lr (eps, noisy gradients), so even more weights stay put; at lr 1e-4 it says 15% where
5 steps leave ~69% of the weights that have a gradient unchanged. amp_bf16 (bf16 compute, fp32 weights) has no such floor, and is the fix.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from bmca_clip.config import ConfigError

log = logging.getLogger(__name__)

# Above this share a warning is logged even when the run is allowed to start.
WARN_SHARE = 0.01


def bf16_half_gap(weights: Tensor) -> Tensor:
    """Per element, half the distance from |w| (as bf16) to the next bf16 value towards zero: the
    smallest update that can still change the weight, whichever its sign. 0 where w is 0."""
    w = weights.detach().to(torch.bfloat16).float().abs()
    mantissa, exponent = torch.frexp(w)  # w = mantissa * 2^exponent, mantissa in [0.5, 1)
    half_gap = torch.ldexp(torch.ones_like(w), exponent - 9)  # bf16: 8 significant bits
    # At an exact power of two the gap below is half the gap above.
    half_gap = torch.where(mantissa == 0.5, half_gap / 2, half_gap)
    return torch.where(w == 0, torch.zeros_like(w), half_gap)


def stalled_weights(model: torch.nn.Module, lr: float) -> tuple[int, int]:
    """(weights whose update of size lr would round away in bf16, all trainable weights)."""
    stalled = total = 0
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and param.is_floating_point():
                stalled += int((bf16_half_gap(param) > lr).sum())  # .sum() -> int syncs, once per tensor
                total += param.numel()
    return stalled, total


def check_pure_bf16(model: torch.nn.Module, lr: float, max_stalled: float) -> float:
    """Refuse pure_bf16 when more than `max_stalled` of the trainable weights cannot move at the peak lr;
    returns the stalled share (logged as a warning above WARN_SHARE)."""
    stalled, total = stalled_weights(model, lr)
    share = stalled / max(total, 1)
    what = (
        f"train.precision=pure_bf16 with optim.lr={lr:g}: {100 * share:.1f}% of the {total} trainable weights "
        "cannot change, because an AdamW step (~lr) is below half a bf16 step of the weight and rounds away"
    )
    if share > max_stalled:
        raise ConfigError(
            f"{what} (train.pure_bf16_max_stalled={max_stalled:g}). Use train.precision=amp_bf16 (bf16 "
            "compute, fp32 weights), or a larger optim.lr, or train.pure_bf16_max_stalled=1.0 to train anyway"
        )
    if share > WARN_SHARE:
        log.warning("%s; train.precision=amp_bf16 avoids this", what)
    return share
