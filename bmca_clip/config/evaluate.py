"""What eval.py runs (EvaluateConfig, conf/evaluate.yaml): its model with the WiSE-FT keys and the suite
group as Hydra composed it (eval/suite.py turns that into tasks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from bmca_clip.config.checks import DEVICES, check, one_of
from bmca_clip.config.model import ModelConfig
from bmca_clip.eval.shard import parse_shard

EVAL_PRECISIONS = ("fp32", "amp_bf16", "amp_fp16")
CHECKPOINT_FORMS = "a checkpoint path, a list of paths (null in it: the model as configured), or null"


@dataclass
class EvalModelConfig(ModelConfig):
    """The model group of eval.py: the architecture, plus blending each checkpoint with its base."""

    wise_ft_alpha: Any = None  # blend each checkpoint with model.pretrained at alpha (or a list of alphas)
    # blend even when model.pretrained is not the weights the checkpoint's run started from (its
    # start_weights fingerprint); by default such a merge is refused
    wise_ft_any_base: bool = False


@dataclass
class SuiteConfig:
    """The suite group (conf/suite/<name>.yaml, or <dir>/suite/<name>.yaml of a hydra.searchpath folder) as
    Hydra composed it, overrides such as `suite.tasks=[pcam]` included: what eval.py scores."""

    name: str = MISSING  # the suite's name; output_dir and the summary use it
    tasks: list[str] = MISSING  # task names (conf/tasks, hydra.searchpath's tasks/) or task YAML paths
    description: str = ""  # one paragraph for the summary and the docs
    expect_tasks: int | None = None  # when set, the run stops unless tasks has this many entries
    protocols: list[str] = field(default_factory=lambda: ["zero_shot"])  # zero_shot, linear_probe, k_shot


@dataclass
class EvaluateConfig:
    """What `eval.py` runs: a suite of tasks over one or more checkpoints of one architecture."""

    # the architecture the checkpoints share; model.pretrained: the weights scored for checkpoint=null and
    # the WiSE-FT base
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    suite: SuiteConfig = MISSING  # the suite group (suite=<name>): its name and task list
    checkpoint: Any = None  # a checkpoint path, a list of them, or null for the model as configured
    data_root: str = "data"  # folder that task sources are relative to
    output_dir: str = "runs/eval/${suite.name}"  # per-task JSON and the summary go here
    batch_size: int = 64  # images (or texts) per forward pass
    num_workers: int = 0  # dataloader worker processes that decode the eval images (0 = main process)
    device: str = "auto"  # auto | cpu | cuda; auto picks cuda when available
    seed: int = 0  # seeds the model init: as train.seed, an untrained model is the one training started from
    precision: str = "fp32"  # fp32 | amp_bf16 | amp_fp16: autocast dtype of both encoders
    # embedding cache (image features, text classifiers) in <cache_dir>/embeddings; null = off; not
    # model.cache_dir, where downloaded weights are kept
    cache_dir: str | None = "~/.cache/bmca_clip/eval"
    rerun: bool = False  # score every task again, even one whose stored JSON has the same config_hash
    compare_baseline: str | None = None  # the model label paired differences are against; null: the first
    shard: str | None = None  # "i/n" (1 <= i <= n): score the i-th of n shares; null: Slurm array or all
    # also draw each task's confusion matrix beside its JSON: <output_dir>/<model>/<task>.confusion.png
    per_class_plots: bool = False
    progress_bar: bool = True  # a tqdm bar per task on stderr, on a terminal only (logs: a line per task)

    def __post_init__(self):
        one_of("device", self.device, DEVICES)
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        one_of("precision", self.precision, EVAL_PRECISIONS)
        # typed Any (OmegaConf's unions cannot hold a list), so its form is checked here
        ckpt = self.checkpoint
        paths = ckpt if isinstance(ckpt, (list, tuple)) else [ckpt]
        well_formed = all(c is None or (isinstance(c, str) and c) for c in paths)
        check(ckpt is None or (bool(paths) and well_formed), "checkpoint", ckpt, CHECKPOINT_FORMS)
        if self.shard is not None:
            parse_shard(self.shard)

    @property
    def checkpoints(self) -> list[str | None]:
        if self.checkpoint is None or isinstance(self.checkpoint, str):
            return [self.checkpoint]
        return list(self.checkpoint)
