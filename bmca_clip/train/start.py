"""Where a training run starts: afresh, or from the checkpoint `resume` names (a requeued Slurm job: its
own latest), refusing what would overwrite an earlier run's checkpoints or change what a resume cannot
(bmca_clip/train/resume.py); once every check passed, the run's config files are written."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

from omegaconf import OmegaConf

from bmca_clip.checkpoint import list_checkpoints, remove_stale_tmp, resolve_resume
from bmca_clip.config import ConfigError, PretrainConfig
from bmca_clip.data.elastic import checkpoint_streams, redistribute
from bmca_clip.io import atomic_write
from bmca_clip.redact import redact_config
from bmca_clip.train.preemption import slurm_restart
from bmca_clip.train.resume import (
    ResumePlan,
    config_history,
    plan_resume,
    resumed_schedule,
    write_config_files,
)

log = logging.getLogger(__name__)


def rank_data_state(state: dict, rank: int, world_size: int, num_workers: int) -> dict:
    """This rank's data position in the checkpoint `state`: its own on the same ranks and workers, else
    its share of the logical streams of all ranks (bmca_clip/data/elastic.py)."""
    saved = ((state.get("config") or {}).get("data") or {}).get("num_workers", num_workers)
    return redistribute(state["data"]["ranks"], rank, world_size, same_workers=saved == num_workers)


def data_streams(state: dict | None) -> int | None:
    """The checkpoint's number of logical streams (None: no data position to continue, or one that does
    not say how many streams each rank held)."""
    ranks = state["data"]["ranks"] if state and "data" in state else []
    return checkpoint_streams(ranks) if ranks and all("num_streams" in r for r in ranks) else None


def _plan(state: dict | None, resolved: dict, world_size: int) -> ResumePlan:
    """What this (re)start changes against the checkpoint it resumes from (bmca_clip/train/resume.py)."""
    if state is None:
        return ResumePlan()
    if not state.get("config"):
        log.warning("the checkpoint records no config: this run's settings are not compared with it")
        return ResumePlan()
    old_world = len(state["data"]["ranks"]) if "data" in state else world_size
    # Both sides redacted: a checkpoint from before redaction, or a rotated token, is no data change.
    old = redact_config(state["config"])
    streams = data_streams(state)
    return plan_resume(
        old, resolved, step=state["step"], old_world=old_world, world=world_size, streams=streams
    )


def checkpoint_dir(cfg: PretrainConfig) -> Path:
    """checkpoint.dir, or output_dir/checkpoints when it is unset."""
    return Path(cfg.checkpoint.dir or Path(cfg.output_dir) / "checkpoints")


class Start(NamedTuple):
    """Where a run starts: the checkpoint it resumes (path and state, None for a fresh start), what the
    resume changes (plan, schedule), the config history, and this run's resolved (redacted) config."""

    path: Path | None
    state: dict | None
    plan: ResumePlan
    schedule: tuple | None
    history: list
    resolved: dict


def decide_start(cfg: PretrainConfig, dist, hydra_files: dict[str, str]) -> Start:
    """Decide where the run starts, refusing what would overwrite or lose work; then record its config."""
    out_dir, ckpt_dir = Path(cfg.output_dir), checkpoint_dir(cfg)
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
            atomic_write(out_dir / ".hydra" / name, text)
    return Start(path, state, plan, schedule, history, resolved)
