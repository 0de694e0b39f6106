"""The Trainer: model, optimizer, schedule and counters, the loop, and checkpoints. One step is
bmca_clip/train/step.py; checkpoints, log lines and evaluation come when the components it is handed at
construction (bmca_clip/train/components.py) say so."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from bmca_clip.checkpoint import packed_rng_state, unpack_rng_state
from bmca_clip.config import ConfigError, PretrainConfig
from bmca_clip.data.loader import TrainLoader
from bmca_clip.dist import DistInfo
from bmca_clip.errors import TrainingDiverged
from bmca_clip.hf_tower import needs_find_unused_parameters
from bmca_clip.loss import build_loss
from bmca_clip.optim import build_optimizer, build_scheduler
from bmca_clip.precision import check_pure_bf16
from bmca_clip.sharded import (
    all_finite,
    check_resume_strategy,
    is_sharded,
    load_dcp,
    meta_template,
    plain_copy,
    save_dcp,
    shard,
)
from bmca_clip.train.components import Components
from bmca_clip.train.log_line import StepWindow, checked_data_counters
from bmca_clip.train.preemption import Preempted, WaitInterrupted
from bmca_clip.train.step import TrainStep, unwrap

log = logging.getLogger(__name__)


class Trainer(TrainStep):
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
        self.validator = parts.validator
        self.accum_freq = cfg.train.accumulation(dist.world_size)  # derived from train.global_batch if set
        if cfg.train.precision == "amp_fp16" and dist.device.type != "cuda":
            raise ConfigError("train.precision=amp_fp16 needs a CUDA device; use fp32 or amp_bf16 on the CPU")
        model = model.to(dist.device)
        if cfg.train.precision == "pure_bf16":  # weights, grads and optimizer state all in bf16
            model = model.to(torch.bfloat16)
            check_pure_bf16(model, cfg.optim.lr, cfg.train.pure_bf16_max_stalled)  # refuses a stalled run
        self._eval_template = None  # fsdp with evaluation: the unsharded model's shape, to evaluate a copy
        if cfg.train.strategy == "fsdp":  # before compile and the optimizer: parameters become DTensors
            self._eval_template = meta_template(model) if self.evaluator is not None else None
            model = shard(model, dist.device, cfg.train.precision)
        if cfg.train.compile:
            model = torch.compile(model)
        if dist.world_size > 1 and cfg.train.strategy == "ddp":
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            # Decided from the model (hf_tower.py): only an unread HF pooler leaves parameters without grads.
            unused = needs_find_unused_parameters(model)
            model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)
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

    def state_dict(self) -> dict:
        """Everything a resume needs; sharded (fsdp), the model and optimizer tensors are left out (an
        empty model, the optimizer's param groups): save() writes them through DCP (bmca_clip/sharded.py)."""
        sharded = is_sharded(unwrap(self.model))
        optimizer = self.optimizer.state_dict()
        return {
            "model": {} if sharded else unwrap(self.model).state_dict(),
            "optimizer": {"param_groups": optimizer["param_groups"]} if sharded else optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "samples_seen": self.samples_seen,
            "nonfinite_steps": self.nonfinite_steps,
            "schedule": {"resumed_at": list(self.resumed_at) if self.resumed_at else None},
        } | ({"sharded": {"format": "dcp", "world_size": self.dist.world_size}} if sharded else {})

    def load_state_dict(self, state: dict, resumed_at: tuple[int, float] | None = None) -> None:
        """Weights, optimizer moments, scaler and counters from `state`; the optimizer's hyperparameters and
        the schedule stay this config's (bmca_clip/train/resume.py checked that what changed may change).
        `resumed_at`: where the rest of the schedule starts, if this resume re-plans it; else the
        checkpoint's own."""
        check_resume_strategy(state, self.cfg.train.strategy, state.get("dcp", "<checkpoint>"))
        # The saved param groups carry the old run's lr, betas, eps and weight decay: keep this config's.
        ours = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        if "dcp" in state:  # every rank reads its shards, the optimizer's param groups with them
            load_dcp(unwrap(self.model), self.optimizer, state["dcp"])
        else:
            unwrap(self.model).load_state_dict(state["model"])
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
                    scores = self.evaluator(self._eval_model())  # every rank: each scores its share of tasks
                    logger.log(self.step, scores)
                    last.update(scores)
                if self.validator is not None and self.validator.should_validate(self.step, steps):
                    scores = self.validator(unwrap(self.model))  # every rank: each encodes its share of pairs
                    logger.log(self.step, scores)
                    last.update(scores)
                deferred = self.save_pending and not self.nonfinite_in_a_row  # one deferred by a nan step
                if self.checkpointer.should_save(self.step, steps) or deferred:
                    self.save(loader)
        return last

    def _eval_model(self) -> torch.nn.Module:
        """The model to evaluate: itself, or under fsdp an unsharded copy (every rank gathers it)."""
        if self._eval_template is None:
            return unwrap(self.model)
        return plain_copy(self._eval_template, unwrap(self.model), self.dist.device)

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
        _check_finite_weights(unwrap(self.model), self.step)  # ranks agree on it: all raise or none
        if self._defer_save():
            return None
        self._saved_step = self.step
        own = (data_state or loader.state_dict(), packed_rng_state(self.dist.device))
        ranks = [own]
        if self.dist.world_size > 1:  # collective: each rank's streams and random draws are its own
            ranks = [None] * self.dist.world_size
            torch.distributed.all_gather_object(ranks, own)
        if is_sharded(unwrap(self.model)):  # every rank writes its shards
            rngs = [unpack_rng_state(r[1]) for r in ranks]
            state = self.state_dict() | {"data": {"ranks": [r[0] for r in ranks]}, "rng": {"ranks": rngs}}
            ckpt = self.checkpointer
            return save_dcp(
                state | ckpt.extra,
                unwrap(self.model),
                self.optimizer,
                ckpt.folder,
                self.step,
                ckpt.keep_last,
                self.dist.is_main,
            )
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
    if is_sharded(model):  # each rank checks its shards; all agree
        finite, bad = all_finite(model)
        if finite:
            return
        bad = bad or ["(on another rank)"]
    else:
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
