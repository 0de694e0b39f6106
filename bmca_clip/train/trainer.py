"""The training step and loop: feature-cache accumulation, mixed precision, clipping; checkpoints, log
lines and evaluation when the components the Trainer is handed (bmca_clip/components.py) say so."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from bmca_clip.checkpoint import packed_rng_state, unpack_rng_state
from bmca_clip.components import Components
from bmca_clip.config import ConfigError, PretrainConfig
from bmca_clip.data.decode import normalize_on_device
from bmca_clip.data.pipeline import TrainLoader
from bmca_clip.dist import DistInfo
from bmca_clip.errors import TrainingDiverged
from bmca_clip.io import autocast, autocast_dtype, weight_dtype
from bmca_clip.loss import build_loss
from bmca_clip.optim import build_optimizer, build_scheduler
from bmca_clip.precision import check_pure_bf16
from bmca_clip.preempt import Preempted, WaitInterrupted
from bmca_clip.step_metrics import StepWindow, checked_data_counters

log = logging.getLogger(__name__)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The open_clip model inside DDP and torch.compile wrappers (whose state_dict keys are the plain ones)."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def _full_batch(out: dict, cached: list[dict] | None, j: int, last: bool) -> tuple:
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


class Trainer:
    """Owns the model, optimizer, schedule and counters; `state_dict()` is everything a resume needs.
    `components`: its checkpointer, metric logger, evaluator and preemption handler, fixed at construction."""

    def __init__(
        self,
        cfg: PretrainConfig,
        dist: DistInfo,
        model: torch.nn.Module,
        *,
        components: Components | None = None,
    ):
        self.cfg, self.dist = cfg, dist
        parts = components or Components()
        self.checkpointer, self.logger = parts.checkpointer, parts.logger
        self.evaluator, self.preemption = parts.evaluator, parts.preemption
        self.accum_freq = cfg.train.accumulation(dist.world_size)  # derived from train.global_batch if set
        if cfg.train.precision == "amp_fp16" and dist.device.type != "cuda":
            raise ConfigError("train.precision=amp_fp16 needs a CUDA device; use fp32 or amp_bf16 on the CPU")
        model = model.to(dist.device)
        if cfg.train.precision == "pure_bf16":  # weights, grads and optimizer state all in bf16
            model = model.to(torch.bfloat16)
            check_pure_bf16(model, cfg.optim.lr, cfg.train.pure_bf16_max_stalled)  # refuses a stalled run
        if cfg.train.compile:
            model = torch.compile(model)
        if dist.world_size > 1:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        self.model = model
        self.optimizer = build_optimizer(unwrap(model), cfg.optim)
        # Built once: rebuilding it every step costs ~4 ms of host time for ViT-L-14 (bench/train_throughput.py).
        self.trainable = [p for p in unwrap(model).parameters() if p.requires_grad]
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.steps)
        self.resumed_at: tuple[int, float] | None = None  # where a resume re-planned the schedule (optim.py)
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.train.precision == "amp_fp16")
        self.loss_fn = build_loss(cfg.loss, dist)
        self.step = 0
        self.samples_seen = 0
        self.nonfinite_steps = 0  # steps whose update was skipped for a nan/inf loss or gradient norm
        self.nonfinite_in_a_row = 0
        self.save_pending = False  # a checkpoint deferred during non-finite steps, due at the next finite one
        self._saved_step: int | None = None  # the step of the last checkpoint this process wrote

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
            # DDP all-reduces gradients only on the last backward; the others accumulate locally.
            no_sync = not last and hasattr(self.model, "no_sync")
            with self.model.no_sync() if no_sync else contextlib.nullcontext():
                out = self._features(images, texts)
                with self.autocast():
                    loss = self.loss_fn(*_full_batch(out, cached, j, last))
                self.scaler.scale(loss).backward()
        return self._optimizer_step(loss)

    def _optimizer_step(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip_norm  # clip_grad_norm_ skips parameters without a gradient
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, clip if clip is not None else float("inf"))
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
            "logit_scale": unwrap(self.model).logit_scale.detach().exp(),
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

    def state_dict(self) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "samples_seen": self.samples_seen,
            "nonfinite_steps": self.nonfinite_steps,
            "schedule": {"resumed_at": list(self.resumed_at) if self.resumed_at else None},
        }

    def load_state_dict(self, state: dict, resumed_at: tuple[int, float] | None = None) -> None:
        """Weights, optimizer moments, scaler and counters from `state`; the optimizer's hyperparameters and
        the schedule stay this config's (bmca_clip/resume.py checked that what changed may change).
        `resumed_at`: where the rest of the schedule starts, if this resume re-plans it; else the
        checkpoint's own."""
        unwrap(self.model).load_state_dict(state["model"])
        # The saved param groups carry the old run's lr, betas, eps and weight decay: keep this config's.
        ours = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, values in zip(self.optimizer.param_groups, ours, strict=True):
            group.update(values)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.samples_seen = state["step"], state["samples_seen"]
        self.nonfinite_steps = state.get("nonfinite_steps", 0)
        saved = (state.get("schedule") or {}).get("resumed_at")
        self.resumed_at = resumed_at or (tuple(saved) if saved else None)
        # Rebuilt rather than loaded: a LambdaLR's state holds the old run's peak lr (base_lrs).
        self.scheduler = build_scheduler(
            self.optimizer, self.cfg.optim, self.cfg.train.steps, self.resumed_at, self.step
        )

    def train(self, loader: TrainLoader) -> dict[str, float]:
        """Run until train.steps; the components say when to log, evaluate and checkpoint. Returns the last
        log line with the last scores. The data workers stop with the loop, however it ends."""
        if self.checkpointer is None or self.logger is None:
            raise ValueError("Trainer.train needs Components(checkpointer=..., logger=...) at construction")
        steps, logger = self.cfg.train.steps, self.logger
        per_step = self.cfg.train.batch_size * self.accum_freq * self.dist.world_size
        last: dict[str, float] = {}
        window = StepWindow()
        # closing(): a failure shuts the DataLoader workers down now, not when its traceback is freed.
        with contextlib.closing(iter(loader)) as batches:
            while self.step < steps:
                t0 = time.perf_counter()
                at_step = loader.state_dict()  # the data position of the last step done, for a preemption
                micro = self._next_batches(batches)
                window.data_time += time.perf_counter() - t0
                if self.preemption is not None and self.preemption.should_stop():  # micro is None: a signal
                    self._stop_for_requeue(loader, at_step)
                lr = self.scheduler.get_last_lr()[0]  # what this step uses: train_step moves the schedule on
                metrics = self.train_step(micro)
                self.step += 1
                self.samples_seen += per_step
                window.steps += 1
                if logger.should_log(self.step, steps):
                    last = self._log_line(metrics, lr, window, per_step, loader)
                    window = StepWindow()
                logger.advance(self.step)
                if self.evaluator is not None and self.evaluator.should_eval(self.step, steps):
                    scores = self.evaluator(unwrap(self.model))  # every rank: each scores its share of tasks
                    logger.log(self.step, scores)
                    last.update(scores)
                deferred = self.save_pending and not self.nonfinite_in_a_row  # one deferred by a nan step
                if self.checkpointer.should_save(self.step, steps) or deferred:
                    self.save(loader)
        return last

    def _log_line(
        self, metrics: dict, lr: float, window: StepWindow, per_step: int, loader
    ) -> dict[str, float]:
        """Every rank (the loss is agreed collectively): this step's log line, handed to the logger."""
        line = {k: v.item() for k, v in self._agree(metrics).items()}  # device sync, once per log line
        line.update(window.rates(per_step, self.dist.world_size), lr=lr, samples_seen=self.samples_seen)
        line.update(checked_data_counters(loader, self.cfg.data.max_bad_fraction))
        if self.dist.device.type == "cuda":
            line["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.dist.device) / 2**30
        self.logger.log(self.step, line)
        return line

    def _next_batches(self, batches: Iterator[dict]) -> list[dict] | None:
        """The next step's micro-batches; None when a preemption signal ended the wait for them (a stalled
        data source would hold it for data.retries x data.timeout_s)."""
        if self.preemption is None:
            return [next(batches) for _ in range(self.accum_freq)]
        try:
            with self.preemption.interruptible():
                return [next(batches) for _ in range(self.accum_freq)]
        except WaitInterrupted:
            return None

    def _stop_for_requeue(self, loader: TrainLoader, data_state: dict) -> None:
        """Every rank: save the last completed step (unless just saved) and raise Preempted. `data_state`
        is the loader's position at that step: batches fetched since then were not trained on."""
        if self._saved_step != self.step:
            self.save(loader, data_state)
        raise Preempted(self.step, self.preemption.received or "a signal on another rank")

    def _agree(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank logs the same loss: the mean of the ranks' local losses is the global batch's loss."""
        if self.dist.world_size == 1:
            return metrics
        loss = metrics["loss"].detach().float().clone()
        torch.distributed.all_reduce(loss)
        return metrics | {"loss": loss / self.dist.world_size}

    def save(self, loader: TrainLoader, data_state: dict | None = None):
        """Write a checkpoint from rank 0 through the checkpointer; every rank must call this (positions and
        RNGs are gathered).
        `data_state`: the loader position to record, when it is not the loader's current one.
        Non-finite weights are never written: the run stops and the checkpoints on disk stay as they were."""
        _check_finite_weights(unwrap(self.model), self.step)  # ranks hold the same weights: all raise
        if self._defer_save():
            return None
        self._saved_step = self.step
        own = (data_state or loader.state_dict(), packed_rng_state(self.dist.device))
        ranks = [own]
        if self.dist.world_size > 1:  # collective: each rank's streams and random draws are its own
            ranks = [None] * self.dist.world_size
            torch.distributed.all_gather_object(ranks, own)
        if not self.dist.is_main:
            return None
        rngs = [unpack_rng_state(r[1]) for r in ranks]
        gathered = {"data": {"ranks": [r[0] for r in ranks]}, "rng": {"ranks": rngs}}
        return self.checkpointer.write(self.state_dict() | gathered, self.step)

    def _defer_save(self) -> bool:
        """Whether to write no checkpoint now: the last step was skipped as non-finite (the same on every
        rank), so these weights may be what produced the nan; keep_last must not prune a good checkpoint
        for them. The checkpoint is written at the next finite step; a run that ends in such a streak stops."""
        self.save_pending = bool(self.nonfinite_in_a_row)
        if not self.save_pending:
            return False
        if self.step >= self.cfg.train.steps:
            raise TrainingDiverged(
                f"step {self.step}: the run ended with {self.nonfinite_in_a_row} non-finite steps in a row; no "
                "final checkpoint was written and none was pruned: resume=latest with a lower optim.lr, or "
                "use the newest checkpoint as the result"
            )
        log.warning(
            "step %d: checkpoint deferred (the last %d steps were non-finite); the newest one on disk is kept",
            self.step,
            self.nonfinite_in_a_row,
        )
        return True


def _check_finite_weights(model: torch.nn.Module, step: int) -> None:
    tensors = {k: t for k, t in model.state_dict().items() if t.is_floating_point()}
    # Device sync, once per checkpoint.
    if bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all()):
        return
    bad = [k for k, t in tensors.items() if not bool(torch.isfinite(t).all())]
    raise TrainingDiverged(
        f"step {step}: the model has non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
        "no checkpoint was written and none was pruned: lower optim.lr or set optim.grad_clip_norm, then "
        "resume=latest from the last checkpoint"
    )
