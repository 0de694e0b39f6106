"""Typed configuration: one dataclass per Hydra group, registered in Hydra's ConfigStore.

The YAML files under `conf/` only hold values; the schemas live here, one module per part:
checks.py (the value checks and shared choices), model.py (the model group), data.py (the data group),
pretrain.py (train.py's PretrainConfig and the groups only it has), evaluate.py (eval.py's
EvaluateConfig, its model with WiSE-FT, the suite group). Because the primary configs
(`conf/pretrain.yaml`, `conf/evaluate.yaml`) start from these schemas, a misspelled key fails when Hydra
composes the config (bmca_clip/cli_args.py says so in one line before Hydra runs), and `to_object()` runs
every `__post_init__` check, so a bad value fails before any model is built, with the dotted key and the
allowed values in the message. `from bmca_clip.config import X` is the public way in.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from bmca_clip.config.checks import DEVICES
from bmca_clip.config.data import DataConfig, SourceConfig
from bmca_clip.config.evaluate import CHECKPOINT_FORMS, EvalModelConfig, EvaluateConfig, SuiteConfig
from bmca_clip.config.model import ModelConfig
from bmca_clip.config.pretrain import (
    LOSSES,
    PRECISIONS,
    RESUME_DATA,
    SCHEDULES,
    TENSORBOARD_MISSING,
    WANDB_MODES,
    CheckpointConfig,
    LoggerConfig,
    LossConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
    TrainEvalConfig,
    WandbConfig,
)
from bmca_clip.config.validation import ValConfig
from bmca_clip.errors import ConfigError

__all__ = [
    "CHECKPOINT_FORMS",
    "DEVICES",
    "LOSSES",
    "PRECISIONS",
    "RESUME_DATA",
    "SCHEDULES",
    "TENSORBOARD_MISSING",
    "WANDB_MODES",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "EvalModelConfig",
    "EvaluateConfig",
    "LoggerConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "SourceConfig",
    "SuiteConfig",
    "TrainConfig",
    "TrainEvalConfig",
    "ValConfig",
    "WandbConfig",
    "register_configs",
    "to_object",
]


def register_configs() -> None:
    """Register the schemas that conf/pretrain.yaml and conf/evaluate.yaml start from, and the resolver
    their hydra.help.template calls (the --help text, bmca_clip/cli_help.py)."""
    from bmca_clip.cli_help import register_help_resolver

    register_help_resolver({"PretrainConfig": PretrainConfig, "EvaluateConfig": EvaluateConfig})
    cs = ConfigStore.instance()
    cs.store(name="pretrain_schema", node=PretrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)


def to_object(cfg: DictConfig, schema: type) -> Any:
    """Resolve a composed config into its dataclass, running every check."""
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    return OmegaConf.to_object(merged)
