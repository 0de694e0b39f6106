"""`run(cfg)`: build everything a training run needs from its config, resume if asked, and train."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from bmca_clip.checkpoint import list_checkpoints, remove_stale_tmp, resolve_resume, restore_rank_rng
from bmca_clip.config import ConfigError, PretrainConfig
from bmca_clip.data.decode import from_open_clip
from bmca_clip.data.pipeline import DataError, TrainLoader, build_train_loader, http_policy
from bmca_clip.data.sources import Source, SourceCommitMoved, resolve_sources
from bmca_clip.dist import init_distributed
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
from bmca_clip.train_eval import PeriodicEval
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
    """Train as `cfg` says; returns the last logged metrics. The caller closes the process group.
    `hydra_files`: the .hydra/ files (name -> YAML) train.py hands over, written only once the start
    checks passed, so a refused start leaves an earlier run's record alone."""
    dist = init_distributed(cfg.train.device)
    with run_lock(Path(cfg.output_dir), dist):  # before anything is read or written in the run folder
        return _run_locked(cfg, dist, hydra_files or {})


def _start(cfg: PretrainConfig, dist, hydra_files: dict[str, str]):
    """Decide where the run starts, refusing what would overwrite or lose work; then record its config.
    Returns (checkpoint path, its state, plan, schedule, history, resolved config); None entries start fresh."""
    out_dir = Path(cfg.output_dir)
    ckpt_dir = Path(cfg.checkpoint.dir or out_dir / "checkpoints")
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
    return path, state, plan, schedule, history, resolved


def _run_locked(cfg: PretrainConfig, dist, hydra_files: dict[str, str]) -> dict[str, float]:
    out_dir = Path(cfg.output_dir)
    ckpt_dir = Path(cfg.checkpoint.dir or out_dir / "checkpoints")
    cfg = _with_accumulation(cfg, dist.world_size, dist.is_main)
    # Fail fast: missing shards or an unlistable hub repo stop the run before its folder is written and
    # before a model is built (a ViT-L-14 download is 1.7 GB).
    sources = resolve_sources(cfg.data, http_policy(cfg.data))
    path, state, plan, schedule, history, resolved = _start(cfg, dist, hydra_files)

    if dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    seed_everything(cfg.train.seed)  # the same on every rank: all ranks must start from identical weights
    bundle = build_model(cfg.model, dist.device)
    # Hashed before Trainer casts pure_bf16 weights in place; every checkpoint carries it for WiSE-FT.
    start = start_weights(bundle.model, cfg.model, cfg.train.seed) if dist.is_main else None
    trainer = Trainer(cfg, dist, bundle.model, ckpt_dir)
    data_state = None
    if state is not None:
        trainer.load_state_dict(state, schedule)
        restore_rank_rng(state["rng"], dist.rank, dist.world_size, dist.device)
        start = state.get("start_weights") or start  # the run's own start, even if its source changed since
        log_plan(plan, trainer.step, cfg.train.seed)
        if not plan.reset_data:
            data_state = _rank_data_state(state, dist.rank, dist.world_size)
        log.info("resumed from %s at step %d", path, trainer.step)
    loader = _loader(cfg, bundle, dist, data_state, sources)
    logger = MetricLogger(
        cfg.logger,
        out_dir,
        total_steps=cfg.train.steps,
        start_step=trainer.step,
        run_name=cfg.name,
        config=resolved,
        enabled=dist.is_main,
    )
    if cfg.eval.suite:
        trainer.evaluator = PeriodicEval(
            cfg.eval.suite,
            cfg.eval.data_root,
            cfg.eval.batch_size,
            bundle.preprocess_eval,
            bundle.tokenizer,
            dist,
        )
    trainer.preemption = PreemptionHandler(dist)
    try:
        extra = {
            "config": resolved,
            "config_history": history,
            "versions": library_versions(),
            "start_weights": redact_config(start),  # model.pretrained may be a URL too
        }
        return trainer.train(loader, logger, extra)
    except Preempted as stop:
        log.warning(
            "%s received: checkpoint saved at step %d; exiting with %d so the job runs again",
            stop.signal_name,
            stop.step,
            stop.code,
        )
        requeue_if_slurm(dist)
        raise
    finally:
        trainer.preemption.restore()
        logger.close()
