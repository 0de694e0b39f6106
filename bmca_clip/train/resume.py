"""What a resume may change: the checkpoint's config against this run's, key by key, and the history.

`plan_resume` compares the two resolved configs and decides per dotted key:

- applied: the optimizer's hyperparameters (optim.lr, weight_decay, beta1, beta2, eps) are set on its
  param groups, and the peak lr scales the whole schedule. train.steps, optim.schedule and optim.lr_min
  re-plan the rest of the schedule at the resume step s0: the lr factor starts at the one in force at s0
  (no jump) and goes to lr_min by a cosine half-wave ending at the new train.steps (constant: it stays);
  a resume still inside the warmup finishes it and then spans the cosine over the new total. Settings
  read as the run goes (clipping, logit-scale clamp, accumulation, logging, checkpoint and eval cadence,
  fp32/amp precision, data retries and caches) simply take effect.
- applied as long as the checkpoint's L logical streams allow it (bmca_clip/data/elastic.py): the number
  of processes (up to L) and data.num_workers; each logical stream continues exactly, redistributed.
  data.streams at 0 or at the checkpoint's L changes nothing.
- refused unless `resume_data=reset`: what decides which samples come next (every other data.* key,
  train.seed, train.batch_size; the number of processes when the checkpoint's L is not known). With reset the run keeps weights, optimizer and
  step and starts a fresh data stream; a checkpoint written after such a reset, with the same data
  settings, continues its own stream exactly (a requeued job repeats its command line).
- refused always: the architecture and the set of trained parameters (model.*), the loss, the warmup
  length, train.strategy (bmca-dcp-convert makes a ddp checkpoint of an fsdp one), and a precision change
  to or from pure_bf16 (weights and optimizer state are stored in it).

Every (re)start appends {"step", "config", "changed", "resume_data", "world_size"} to the config history
that checkpoints carry; output_dir/config.yaml is the config in force, config_history.yaml the history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bmca_clip.config import ConfigError, PretrainConfig
from bmca_clip.data.elastic import STREAMS_ADVICE
from bmca_clip.io import atomic_write
from bmca_clip.redact import redact_config

log = logging.getLogger(__name__)

OPTIMIZER_KEYS = ("optim.lr", "optim.weight_decay", "optim.beta1", "optim.beta2", "optim.eps")
RESHAPING_KEYS = ("train.steps", "optim.schedule", "optim.lr_min")  # re-plan the rest of the schedule
_NOT_COMPARED = ("name", "output_dir", "resume", "resume_data")  # how and where to start, not what runs
_MODEL_APPLIED = ("model.cache_dir", "model.grad_checkpointing")
_DATA_APPLIED = (  # transport and safety nets: the samples, and their order, stay the same
    "data.max_bad_fraction",
    "data.max_bad_after",
    "data.cache_dir",
    "data.cache_limit_gb",
    "data.retries",
    "data.timeout_s",
    "data.retry_backoff_s",
    "data.max_empty_shards",
)
_STREAM_KEYS = ("train.seed", "train.batch_size")
_FIXED_KEYS = {
    "optim.warmup_steps": "the warmup already run cannot be re-planned",
    "loss.name": "the loss is tied to the model's logit bias",
    "train.strategy": "ddp and fsdp checkpoints differ in format; bmca-dcp-convert turns an fsdp one into a ddp one",
}
_WORLD = "world size"


@dataclass
class ResumePlan:
    changed: dict[str, list] = field(default_factory=dict)  # key -> [old, new], all applied
    reset_data: bool = False  # start a fresh data stream (resume_data=reset took effect)


def _leaves(cfg: dict, schema: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> values; a map field (data.sources, data.balance.weights, ...) is one value."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        node = schema.get(key) if isinstance(schema, dict) else None
        if isinstance(value, dict) and isinstance(node, dict) and node:
            out.update(_leaves(value, node, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differences(old: dict, new: dict) -> dict[str, list]:
    schema = OmegaConf.to_container(OmegaConf.structured(PretrainConfig), resolve=False)
    defaults, before, after = _leaves(schema, schema), _leaves(old, schema), _leaves(new, schema)
    changed = {}
    for key, value in after.items():
        if key in _NOT_COMPARED:
            continue
        if key not in before:  # a key newer than the checkpoint: at its default it changes nothing
            if value != defaults.get(key, object()):
                changed[key] = [None, value]
        elif before[key] != value:
            changed[key] = [before[key], value]
    return changed


def _kind(key: str, old: Any, new: Any, streams: int | None = None) -> str:
    """applied | stream | fixed; `streams`: the checkpoint's logical streams (None: not known)."""
    if streams is not None and _elastic(key, new, streams):
        return "applied"
    if key in _FIXED_KEYS or (key == "train.precision" and "pure_bf16" in (old, new)):
        return "fixed"
    if key.startswith("model."):
        return "applied" if key in _MODEL_APPLIED else "fixed"
    if key in _STREAM_KEYS or key == _WORLD or (key.startswith("data.") and key not in _DATA_APPLIED):
        return "stream"
    return "applied"


def _elastic(key: str, new: Any, streams: int) -> bool:
    """What logical streams make a topology setting: the stream position moves with them."""
    if key == "data.streams":
        return new in (0, streams)
    return key in (_WORLD, "data.num_workers")


def _listed(changes: dict[str, list]) -> str:
    return ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items())


def plan_resume(
    old: dict,
    new: PretrainConfig | dict,
    *,
    step: int,
    old_world: int,
    world: int,
    streams: int | None = None,
) -> ResumePlan:
    """Compare the checkpoint's resolved config `old` with this run's `new`; refuse (ConfigError, one line
    naming key, old and new value and what to do) or return what changed, all of it to be applied.
    `streams`: the checkpoint's number of logical streams (None: unknown, a topology change is refused)."""
    if not isinstance(new, dict):
        new = OmegaConf.to_container(OmegaConf.structured(new), resolve=True)
    changed = _differences(old, new)
    if old_world != world:
        changed[_WORLD] = [old_world, world]
    kinds = {key: _kind(key, *values, streams) for key, values in changed.items()}
    fixed = {k: v for k, v in changed.items() if kinds[k] == "fixed"}
    if fixed:
        reasons = "; ".join(
            sorted({_FIXED_KEYS.get(k, "the model and its trained parameters") for k in fixed})
        )
        raise ConfigError(
            f"resume: {_listed(fixed)} cannot change when resuming ({reasons}); resume with the old "
            "value, or start a new run (name=...) with model.pretrained=<this checkpoint> to go on from "
            "its weights"
        )
    steps = new["train"]["steps"]
    if steps < step:
        raise ConfigError(
            f"resume: train.steps={steps} but the checkpoint is at step {step}; set train.steps >= {step}"
        )
    stream = {k: v for k, v in changed.items() if kinds[k] == "stream"}
    wants_reset = new.get("resume_data") == "reset"
    if streams is not None and world > streams and not wants_reset:
        raise ConfigError(
            f"resume: the checkpoint's data stream has {streams} logical streams (data.streams) and this "
            f"run {world} processes: resume on at most {streams}, or pass resume_data=reset; for runs that "
            f"may grow, {STREAMS_ADVICE}"
        )
    if stream and not wants_reset:
        raise ConfigError(
            f"resume: {_listed(stream)} would change which samples come next, so the data stream cannot "
            "continue exactly; resume with the old value, or pass resume_data=reset to keep weights, "
            "optimizer and step and start a fresh data stream"
        )
    # A requeued job repeats its command line: a checkpoint written after a reset with these same data
    # settings carries the fresh stream's position, which continues exactly.
    already_reset = old.get("resume_data") == "reset" and not stream
    return ResumePlan(changed, reset_data=wants_reset and not already_reset)


def resumed_schedule(state: dict, plan: ResumePlan, cfg: PretrainConfig) -> tuple[int, float] | None:
    """Where the rest of the lr schedule starts (optim.lr_factor's `resumed_at`): the resume step and the
    factor in force there when this resume re-plans it, else the checkpoint's own (None: never re-planned)."""
    saved = (state.get("schedule") or {}).get("resumed_at")
    step = state["step"]
    if not plan.changed.keys() & set(RESHAPING_KEYS) or step < cfg.optim.warmup_steps:
        return tuple(saved) if saved else None
    group = state["optimizer"]["param_groups"][0]
    factor = group["lr"] / group["initial_lr"]
    if factor == 0 and cfg.optim.lr_min == 0:
        raise ConfigError(
            f"resume: {_listed({k: plan.changed[k] for k in RESHAPING_KEYS if k in plan.changed})}: the "
            f"schedule had already decayed to lr 0 at step {step}, so the steps added would not train; set "
            "optim.lr_min > 0 (the lr rises to it) or start a new run (name=...) with "
            "model.pretrained=<this checkpoint>"
        )
    return step, factor


def log_plan(plan: ResumePlan, step: int, seed: int) -> None:
    for key, (old, new) in plan.changed.items():
        log.info("resume: %s %s -> %s applied", key, old, new)
    if plan.reset_data:
        log.warning(
            "resume_data=reset: weights, optimizer and step %d kept; the data stream starts afresh from "
            "train.seed=%d (with the same data and seed it yields the samples this run began with)",
            step,
            seed,
        )


def config_history(state: dict | None, config: dict, plan: ResumePlan, world: int) -> list[dict]:
    """The checkpoint's history plus this (re)start; a checkpoint from before histories starts it with
    the config it recorded, marked as such. Redacted: older checkpoints may hold credentials in URLs."""
    history: list[dict] = []
    if state is not None:
        history = list(state.get("config_history") or [])
        if not history:
            history = [
                {
                    "step": None,
                    "config": state.get("config"),
                    "changed": {},
                    "note": "recorded before histories",
                }
            ]
    entry = {
        "step": state["step"] if state is not None else 0,
        "config": config,
        "changed": plan.changed,
        "resume_data": "reset" if plan.reset_data else "exact",
        "world_size": world,
    }
    return redact_config([*history, entry])


def write_config_files(out_dir: Path, config: dict, history: list[dict]) -> None:
    """output_dir/config.yaml: the config in force now; config_history.yaml: one entry per (re)start."""
    # Whole files, replacing a symlink rather than writing through it into another run's folder.
    atomic_write(out_dir / "config.yaml", OmegaConf.to_yaml(config))
    atomic_write(out_dir / "config_history.yaml", OmegaConf.to_yaml(history))
