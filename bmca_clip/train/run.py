"""`run(cfg)`: build everything a training run needs from its config (where it starts: start.py), resume
if asked, train, and close whatever the run opened, however it ends."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from pathlib import Path

import numpy as np
import torch

from bmca_clip.checkpoint import Checkpointer, restore_rank_rng
from bmca_clip.config import PretrainConfig
from bmca_clip.data.loader import TrainLoader, build_train_loader, http_policy
from bmca_clip.data.sources import Source, SourceCommitMoved, resolve_sources
from bmca_clip.data.transforms import from_open_clip
from bmca_clip.dist import init_distributed, shutdown
from bmca_clip.io import library_versions
from bmca_clip.model import build_model, start_weights
from bmca_clip.redact import redact_config
from bmca_clip.sharded import require_process_group
from bmca_clip.tracking import MetricLogger
from bmca_clip.train.components import Components
from bmca_clip.train.evaluation import PeriodicEval, load_eval_tasks
from bmca_clip.train.preemption import Preempted, PreemptionHandler, requeue_if_slurm
from bmca_clip.train.resume import log_plan
from bmca_clip.train.rundir import run_lock
from bmca_clip.train.start import Start, checkpoint_dir, data_streams, decide_start, rank_data_state
from bmca_clip.train.trainer import Trainer
from bmca_clip.validation import build_validation

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _with_accumulation(cfg: PretrainConfig, world_size: int, is_main: bool) -> PretrainConfig:
    """cfg with train.accum_freq as this world trains it (derived when train.global_batch is set), so the
    recorded config and the resume check see the accumulation in force; refuses what does not divide."""
    accum = cfg.train.accumulation(world_size)
    (log.info if is_main else log.debug)(
        "contrastive batch %d = train.batch_size %d x accumulation %d x %d processes (%s)",
        cfg.train.batch_size * accum * world_size,
        cfg.train.batch_size,
        accum,
        world_size,
        "derived from train.global_batch" if cfg.train.global_batch else "train.accum_freq",
    )
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, accum_freq=accum))


def _loader(
    cfg: PretrainConfig, bundle, dist, data_state: dict | None, sources: list[Source], streams: int | None
) -> TrainLoader:
    """This rank's batches, continuing `data_state` (of `streams` logical streams) exactly. Under resume_data=reset a stream whose hub
    commit moved starts afresh: a requeued job repeats its reset command line, which the resume plan reads
    as 'already reset' and so passes the position on; a later move of the commit must not block it."""

    def build(state: dict | None) -> TrainLoader:
        return build_train_loader(
            cfg.data,
            from_open_clip(bundle.model, is_train=True),  # uint8 from the workers, normalised on the device
            bundle.tokenizer,
            batch_size=cfg.train.batch_size,
            seed=cfg.train.seed,  # the streams are told apart by rank and worker inside
            rank=dist.rank,
            world_size=dist.world_size,
            state=state,
            sources=sources,
            streams=streams if state else None,  # a fresh stream: data.streams or ranks x workers
        )

    try:
        return build(data_state)
    except SourceCommitMoved as moved:
        if cfg.resume_data != "reset":
            raise
        log.warning("%s; resume_data=reset: the data stream starts afresh on the new commit", moved)
        return build(None)


def run(cfg: PretrainConfig, hydra_files: dict[str, str] | None = None) -> dict[str, float]:
    """Train as `cfg` says; returns the last logged metrics. `hydra_files`: the .hydra/ files (name -> YAML)
    train.py hands over, written only once the start checks passed, so a refused start leaves an earlier
    run's record alone. Whatever the run opens (the process group, the run folder's lock, the metric
    logger's files and wandb run, the signal handlers) is closed here, newest first, however it ends."""
    with contextlib.ExitStack() as opened:
        opened.callback(shutdown)  # the process group, if init_distributed formed one
        dist = init_distributed(cfg.train.device)
        opened.enter_context(run_lock(Path(cfg.output_dir), dist))  # before anything in the folder is read
        trainer, loader = _build(cfg, dist, hydra_files or {})  # every check passed: now open the sinks
        opened.enter_context(trainer.logger)
        opened.enter_context(trainer.preemption)
        try:
            return trainer.train(loader)  # the data workers are the loop's, stopped as it ends
        except Preempted as stop:
            log.warning(
                "%s received: checkpoint saved at step %d; exiting with %d so the job runs again",
                stop.signal_name,
                stop.step,
                stop.code,
            )
            requeue_if_slurm(dist)
            raise


def _build(cfg: PretrainConfig, dist, hydra_files: dict[str, str]) -> tuple[Trainer, TrainLoader]:
    """The Trainer with its components, resumed if asked, and this rank's data loader; opens nothing."""
    cfg = _with_accumulation(cfg, dist.world_size, dist.is_main)
    if cfg.train.strategy == "fsdp":
        require_process_group()
    # Fail fast: missing shards, an unlistable hub repo or a misspelt eval.suite stop the run before its
    # folder is written and before a model is built (a ViT-L-14 download is 1.7 GB).
    sources = resolve_sources(cfg.data, http_policy(cfg.data))
    eval_tasks = load_eval_tasks(cfg.eval)
    start = decide_start(cfg, dist, hydra_files)

    if dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    seed_everything(cfg.train.seed)  # the same on every rank: all ranks must start from identical weights
    bundle = build_model(cfg.model, dist.device)
    # Hashed before Trainer casts pure_bf16 weights in place; every checkpoint carries it for WiSE-FT.
    weights = start_weights(bundle.model, cfg.model, cfg.train.seed) if dist.is_main else None
    if start.state is not None:  # the run's own start, even if its source changed since
        weights = start.state.get("start_weights") or weights
    evaluator = None
    if eval_tasks is not None:
        evaluator = PeriodicEval(eval_tasks, cfg.eval, bundle.preprocess_eval, bundle.tokenizer, dist)
    components = _components(cfg, dist, start, weights, evaluator)
    components = dataclasses.replace(components, validator=build_validation(cfg, sources, bundle, dist))
    trainer = Trainer(cfg, dist, bundle.model, components=components)
    data_state = None
    if start.state is not None:
        trainer.load_state_dict(start.state, start.schedule)
        restore_rank_rng(start.state["rng"], dist.rank, dist.world_size, dist.device)
        log_plan(start.plan, trainer.step, cfg.train.seed)
        if not start.plan.reset_data:
            data_state = rank_data_state(start.state, dist.rank, dist.world_size, cfg.data.num_workers)
        log.info("resumed from %s at step %d", start.path, trainer.step)
    streams = data_streams(start.state) if data_state else None
    return trainer, _loader(cfg, bundle, dist, data_state, sources, streams)


def _components(cfg: PretrainConfig, dist, start: Start, weights, evaluator) -> Components:
    """The checkpointer, metric logger and preemption handler of this run (none opened yet)."""
    out_dir = Path(cfg.output_dir)
    extra = {  # what every checkpoint records besides the training state
        "config": start.resolved,
        "config_history": start.history,
        "versions": library_versions(),
        "start_weights": redact_config(weights),  # model.pretrained may be a URL too
    }
    ckpt = cfg.checkpoint
    logger = MetricLogger(
        cfg.logger,
        out_dir,
        total_steps=cfg.train.steps,
        start_step=start.state["step"] if start.state is not None else 0,
        run_name=cfg.name,
        config=start.resolved,
        enabled=dist.is_main,
        log_every=cfg.train.log_every,
    )
    return Components(
        checkpointer=Checkpointer(
            checkpoint_dir(cfg), every_steps=ckpt.every_steps, keep_last=ckpt.keep_last, extra=extra
        ),
        logger=logger,
        evaluator=evaluator,
        preemption=PreemptionHandler(dist),
    )
