"""`run(cfg)`: build everything a training run needs from its config, resume if asked, and train."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from omegaconf import OmegaConf

from bmca_clip.checkpoint import (
    Checkpointer,
    list_checkpoints,
    remove_stale_tmp,
    resolve_resume,
    restore_rank_rng,
)
from bmca_clip.components import Components
from bmca_clip.config import ConfigError, PretrainConfig
from bmca_clip.data.decode import from_open_clip
from bmca_clip.data.pipeline import DataError, TrainLoader, build_train_loader, http_policy
from bmca_clip.data.sources import Source, SourceCommitMoved, resolve_sources
from bmca_clip.dist import init_distributed, shutdown
from bmca_clip.io import library_versions
from bmca_clip.model import build_model, start_weights
from bmca_clip.preempt import Preempted, PreemptionHandler, requeue_if_slurm, slurm_restart
from bmca_clip.redact import redact_config
from bmca_clip.resume import (
    ResumePlan,
    config_history,
    log_plan,
    plan_resume,
    resumed_schedule,
    write_config_files,
)
from bmca_clip.rundir import atomic_write_text, run_lock
from bmca_clip.tracking import MetricLogger
from bmca_clip.train_eval import PeriodicEval, load_eval_tasks
from bmca_clip.trainer import Trainer

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


def _rank_data_state(state: dict, rank: int, world_size: int) -> dict:
    ranks = state["data"]["ranks"]
    if len(ranks) != world_size:
        raise DataError(
            f"the checkpoint holds data positions for {len(ranks)} ranks and this run has {world_size}: "
            "resume on the same number of processes to continue the data stream exactly"
        )
    return ranks[rank]


def _plan(state: dict | None, resolved: dict, world_size: int) -> ResumePlan:
    """What this (re)start changes against the checkpoint it resumes from (bmca_clip/resume.py)."""
    if state is None:
        return ResumePlan()
    if not state.get("config"):
        log.warning("the checkpoint records no config: this run's settings are not compared with it")
        return ResumePlan()
    old_world = len(state["data"]["ranks"]) if "data" in state else world_size
    # Both sides redacted: a checkpoint from before redaction, or a rotated token, is no data change.
    old = redact_config(state["config"])
    return plan_resume(old, resolved, step=state["step"], old_world=old_world, world=world_size)


def _loader(cfg: PretrainConfig, bundle, dist, data_state: dict | None, sources: list[Source]) -> TrainLoader:
    """This rank's batches, continuing `data_state` exactly. Under resume_data=reset a stream whose hub
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


def _ckpt_dir(cfg: PretrainConfig) -> Path:
    return Path(cfg.checkpoint.dir or Path(cfg.output_dir) / "checkpoints")


class _Start(NamedTuple):
    """Where a run starts: the checkpoint it resumes (path and state, None for a fresh start), what the
    resume changes (plan, schedule), the config history, and this run's resolved (redacted) config."""

    path: Path | None
    state: dict | None
    plan: ResumePlan
    schedule: tuple | None
    history: list
    resolved: dict


def _start(cfg: PretrainConfig, dist, hydra_files: dict[str, str]) -> _Start:
    """Decide where the run starts, refusing what would overwrite or lose work; then record its config."""
    out_dir, ckpt_dir = Path(cfg.output_dir), _ckpt_dir(cfg)
    resume = cfg.resume
    if resume is None and (restart := slurm_restart()):
        resume = "latest"  # a requeued Slurm job carries on from its own last checkpoint
        log.info("Slurm restart %d of job %s: resume=latest", restart, os.environ.get("SLURM_JOB_ID"))
    if resume is None and (earlier := list_checkpoints(ckpt_dir)):
        raise ConfigError(
            f"{ckpt_dir} already holds checkpoints of an earlier run (newest: {earlier[-1].name}); nothing "
            "was overwritten. Pass resume=latest to continue that run, or name=/output_dir= for a new one"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # What the run records (config.yaml, checkpoints, wandb): credentials in shard URLs are redacted.
    resolved = redact_config(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
    path, state = resolve_resume(resume, ckpt_dir) or (None, None)
    plan = _plan(state, resolved, dist.world_size)  # refuses a change a resume cannot make, before any work
    schedule = resumed_schedule(state, plan, cfg) if state is not None else None  # may refuse too
    history = config_history(state, resolved, plan, dist.world_size)
    if dist.is_main:  # every check passed: from here on the run folder is this run's
        remove_stale_tmp(ckpt_dir)
        write_config_files(out_dir, resolved, history)
        for name, text in hydra_files.items():
            (out_dir / ".hydra").mkdir(exist_ok=True)
            atomic_write_text(out_dir / ".hydra" / name, text)
    return _Start(path, state, plan, schedule, history, resolved)


def _build(cfg: PretrainConfig, dist, hydra_files: dict[str, str]) -> tuple[Trainer, TrainLoader]:
    """The Trainer with its components, resumed if asked, and this rank's data loader; opens nothing."""
    cfg = _with_accumulation(cfg, dist.world_size, dist.is_main)
    # Fail fast: missing shards, an unlistable hub repo or a misspelt eval.suite stop the run before its
    # folder is written and before a model is built (a ViT-L-14 download is 1.7 GB).
    sources = resolve_sources(cfg.data, http_policy(cfg.data))
    eval_tasks = load_eval_tasks(cfg.eval)
    start = _start(cfg, dist, hydra_files)

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
    trainer = Trainer(cfg, dist, bundle.model, components=components)
    data_state = None
    if start.state is not None:
        trainer.load_state_dict(start.state, start.schedule)
        restore_rank_rng(start.state["rng"], dist.rank, dist.world_size, dist.device)
        log_plan(start.plan, trainer.step, cfg.train.seed)
        if not start.plan.reset_data:
            data_state = _rank_data_state(start.state, dist.rank, dist.world_size)
        log.info("resumed from %s at step %d", start.path, trainer.step)
    return trainer, _loader(cfg, bundle, dist, data_state, sources)


def _components(cfg: PretrainConfig, dist, start: _Start, weights, evaluator) -> Components:
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
            _ckpt_dir(cfg), every_steps=ckpt.every_steps, keep_last=ckpt.keep_last, extra=extra
        ),
        logger=logger,
        evaluator=evaluator,
        preemption=PreemptionHandler(dist),
    )
