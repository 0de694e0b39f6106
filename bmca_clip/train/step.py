"""One optimizer step of the Trainer: feature-cache accumulation over micro-batches, mixed precision,
gradient clipping, and skipping an update whose loss or gradient norm is nan/inf."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch.nn.parallel import DistributedDataParallel

from bmca_clip.data.transforms import normalize_on_device
from bmca_clip.errors import TrainingDiverged
from bmca_clip.io import autocast, autocast_dtype, weight_dtype
from bmca_clip.sharded import full

log = logging.getLogger(__name__)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The open_clip model inside DDP and torch.compile wrappers (whose state_dict keys are the plain ones)."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def full_batch(out: dict, cached: list[dict] | None, j: int, last: bool) -> tuple:
    """Loss inputs for micro-batch j: its fresh features among the cached features of the others."""
    scale, bias = out["logit_scale"], out.get("logit_bias")
    if cached is None:
        return out["image_features"], out["text_features"], scale, bias
    image_f = torch.cat(
        [out["image_features"] if i == j else c["image_features"] for i, c in enumerate(cached)]
    )
    text_f = torch.cat([out["text_features"] if i == j else c["text_features"] for i, c in enumerate(cached)])
    if not last:
        # The loss depends on logit_scale (and bias) directly in every pass: let only the last pass send
        # that gradient, or it would be counted once per micro-batch (open_clip counts it k times).
        scale, bias = scale.detach(), bias.detach() if bias is not None else None
    return image_f, text_f, scale, bias


class TrainStep:
    """The step half of the Trainer (bmca_clip/train/trainer.py), a mixin: these methods read and update
    what Trainer.__init__ builds (cfg, dist, model, optimizer, trainable, scheduler, scaler, loss_fn, step,
    the non-finite counters), so the loop and the step each read on their own."""

    def autocast(self):
        return autocast(self.dist.device, autocast_dtype(self.cfg.train.precision))

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        """Batches arrive as uint8 (4x less to copy than float); normalise once they are on the device."""
        images = images.to(self.dist.device, non_blocking=True)
        if images.dtype != torch.uint8:
            return images
        cfg = unwrap(self.model).visual.preprocess_cfg
        return normalize_on_device(
            images, cfg["mean"], cfg["std"], dtype=weight_dtype(self.cfg.train.precision)
        )

    def _features(self, images, texts) -> dict:
        with self.autocast():
            return self.model(images, texts)

    def train_step(self, micro_batches: list[dict]) -> dict[str, torch.Tensor]:
        """One optimizer step over `micro_batches`, whose features form one contrastive batch.

        With several micro-batches (open_clip's accum_freq), features of all of them are first computed
        without gradients and cached; then each micro-batch is recomputed with gradients and its fresh
        features replace its cached ones in the full-batch loss. Summed over micro-batches, this is the
        gradient of the full-batch loss, in the memory of one micro-batch.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        dev = self.dist.device
        batches = [(self._images(b["images"]), b["texts"].to(dev, non_blocking=True)) for b in micro_batches]
        cached = None
        if len(batches) > 1:
            with torch.no_grad():
                cached = [self._features(img, txt) for img, txt in batches]
        for j, (images, texts) in enumerate(batches):
            last = j == len(batches) - 1
            # DDP all-reduces gradients only on the last backward; the others accumulate locally. FSDP
            # reduce-scatters after every backward, so that only sharded gradients are ever kept (an
            # unsharded accumulation would hold the whole model's gradients, which fsdp is there to avoid).
            no_sync = not last and hasattr(self.model, "no_sync")
            with self.model.no_sync() if no_sync else contextlib.nullcontext():
                out = self._features(images, texts)
                with self.autocast():
                    loss = self.loss_fn(*full_batch(out, cached, j, last))
                self.scaler.scale(loss).backward()
        return self._optimizer_step(loss)

    def _optimizer_step(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip_norm  # clip_grad_norm_ skips parameters without a gradient
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, clip if clip is not None else float("inf"))
        grad_norm = full(grad_norm)  # fsdp: a replicated DTensor, the norm over every rank's shards
        ok = torch.isfinite(grad_norm)  # the same on every rank: DDP all-reduced the gradients
        if self.dist.world_size == 1:  # a rank's own loss could differ, and ranks must agree to skip
            ok = ok & torch.isfinite(loss.detach())
        # Device sync, once per step: whether to apply the update must be known before optimizer.step
        # (GradScaler.step reads its own inf check the same way under amp_fp16).
        finite = bool(ok)
        if finite:
            self.scaler.step(self.optimizer)
        else:
            self._skipped(loss, grad_norm)
        self.scaler.update()  # under amp_fp16 an overflow backs the scale off, stepped or not
        # A skipped update still moves the schedule on: lr stays a function of the step, as a resume rebuilds it.
        self.scheduler.step()
        if finite:
            self.nonfinite_in_a_row = 0
        with torch.no_grad():
            unwrap(self.model).logit_scale.clamp_(0, self.cfg.train.logit_scale_max)
        # Tensors, not floats: calling .item() here would force a device sync every step.
        return {
            "loss": loss.detach(),
            "grad_norm": grad_norm.detach(),
            # fsdp: logit_scale is a 1-element sharded vector (sharded.py), gathered whole here
            "logit_scale": full(unwrap(self.model).logit_scale.detach()).exp().reshape(()),
            "nonfinite_steps": torch.tensor(float(self.nonfinite_steps)),
        }

    def _skipped(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Count a step whose update was dropped; too many in a row stop the run before it saves."""
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        step, limit = self.step + 1, self.cfg.train.max_nonfinite_steps
        lr, precision = self.scheduler.get_last_lr()[0], self.cfg.train.precision
        log.warning(
            "step %d: loss %s, grad norm %s: update skipped (%d in a row)",
            step,
            loss.item(),
            grad_norm.item(),
            self.nonfinite_in_a_row,
        )
        if self.nonfinite_in_a_row >= limit:
            raise TrainingDiverged(
                f"step {step}: the loss or gradient norm was nan/inf for {limit} steps in a row "
                f"(train.max_nonfinite_steps={limit}) at lr {lr:.3g}, precision {precision}; no update was "
                "applied and the checkpoints kept are finite: lower optim.lr, set optim.grad_clip_norm or "
                "change train.precision, then resume=latest"
            )
