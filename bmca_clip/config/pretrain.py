"""What train.py runs (PretrainConfig, conf/pretrain.yaml) and the groups only it has: optim, loss, train,
checkpoint, logger and eval (zero-shot evaluation during training). `model` and `data` have modules of
their own (config/model.py, config/data.py)."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import ClassVar

from bmca_clip.config.checks import DEVICES, check, finite, one_of
from bmca_clip.config.data import DataConfig
from bmca_clip.config.model import ModelConfig
from bmca_clip.config.validation import ValConfig
from bmca_clip.errors import ConfigError

PRECISIONS = ("fp32", "amp_bf16", "amp_fp16", "pure_bf16")
SCHEDULES = ("cosine", "constant")
LOSSES = ("clip", "siglip")
WANDB_MODES = ("online", "offline", "disabled")
RESUME_DATA = ("exact", "reset")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class OptimConfig:
    lr: float = 5e-4  # peak learning rate, reached after warmup
    weight_decay: float = 0.2  # AdamW decay of weight matrices; never norms, biases, embeddings, logit_scale
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.98  # AdamW's second-moment decay (CLIP uses 0.98; the BMCA-CLIP recipe 0.95)
    eps: float = 1e-6  # AdamW's epsilon (1e-6, as open_clip uses for ViTs)
    warmup_steps: int = 100  # linear warmup from 0 to lr
    schedule: str = "cosine"  # cosine decay to lr_min after warmup, or constant
    lr_min: float = 0.0  # final learning rate of the cosine schedule
    grad_clip_norm: float | None = 1.0  # clip the global gradient norm; null = no clipping

    def __post_init__(self):
        check(self.lr > 0 and finite(self.lr), "optim.lr", self.lr, "a finite positive float")
        wd = self.weight_decay
        check(wd >= 0 and finite(wd), "optim.weight_decay", wd, "a finite float >= 0")
        check(self.eps > 0 and finite(self.eps), "optim.eps", self.eps, "a finite positive float")
        check(
            0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,  # false for nan
            "optim.beta1/beta2",
            (self.beta1, self.beta2),
            "in [0, 1)",
        )
        check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "an integer >= 0")
        one_of("optim.schedule", self.schedule, SCHEDULES)
        check(0 <= self.lr_min <= self.lr, "optim.lr_min", self.lr_min, "between 0 and optim.lr")
        clip = self.grad_clip_norm
        check(clip is None or clip > 0, "optim.grad_clip_norm", clip, "a positive float or null")


@dataclass
class LossConfig:
    name: str = "clip"  # contrastive loss: open_clip's ClipLoss
    local_loss: bool = True  # each rank computes logits for its own samples against all (saves memory)
    gather_with_grad: bool = True  # gather features with gradients (required for exact local_loss)

    def __post_init__(self):
        one_of("loss.name", self.name, LOSSES)


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps to run in total
    batch_size: int = 256  # micro-batch per device; contrastive batch = batch_size * accum_freq * world
    # the contrastive batch in pairs, whatever the number of processes: accum_freq is derived from it as
    # global_batch / (batch_size * world); a world it does not divide is refused; null = not fixed
    global_batch: int | None = None
    # micro-batches whose features are cached so one loss spans all of them; null = 1, or derived from
    # global_batch (a value given with global_batch must agree with the derived one)
    accum_freq: int | None = None
    precision: str = "fp32"  # fp32 | amp_bf16 | amp_fp16 (GradScaler, CUDA only) | pure_bf16 (bf16 weights)
    # pure_bf16 refuses to start when more than this share of the trainable weights cannot move at the peak
    # optim.lr (the update rounds away in bf16; bmca_clip/precision.py); 1.0 = never refuse
    pure_bf16_max_stalled: float = 0.1
    device: str = "auto"  # auto picks cuda when available
    seed: int = 0  # seeds model init, data order and augmentation
    log_every: int = 10  # steps between metric lines
    logit_scale_max: float = math.log(100)  # clamp, as in CLIP, so the temperature cannot collapse
    compile: bool = False  # torch.compile the model (slow first steps, faster after; best on GPUs)
    tf32: bool = True  # TF32 matmuls on Ampere+ GPUs: ~3x faster fp32 matmuls, CLIP-training-safe
    # a step whose loss or gradient norm is nan/inf is skipped (no update, counted as nonfinite_steps);
    # this many in a row stop the run, its last checkpoint (always finite) kept
    max_nonfinite_steps: int = 10
    strategy: str = (
        "ddp"  # ddp (weights replicated) | fsdp (FSDP2: weights, grads, optimizer sharded; torchrun)
    )

    def __post_init__(self):
        check(self.steps >= 1, "train.steps", self.steps, "an integer >= 1")
        check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        accum, total = self.accum_freq, self.global_batch
        check(accum is None or accum >= 1, "train.accum_freq", accum, "an integer >= 1 or null")
        check(total is None or total >= 1, "train.global_batch", total, "an integer >= 1 or null")
        if accum is None and total is None:
            self.accum_freq = 1
        one_of("train.precision", self.precision, PRECISIONS)
        check(
            0 <= self.pure_bf16_max_stalled <= 1,
            "train.pure_bf16_max_stalled",
            self.pure_bf16_max_stalled,
            "a share in [0, 1]",
        )
        one_of("train.device", self.device, DEVICES)
        # numpy's global seed (train.py seed_everything) takes 0 .. 2**32 - 1 only.
        check(0 <= self.seed < 2**32, "train.seed", self.seed, "an integer in [0, 2**32)")
        check(self.log_every >= 1, "train.log_every", self.log_every, "an integer >= 1")
        top = self.logit_scale_max  # a log: exp(top) is the largest logit scale; below 0 it inverts CLIP's
        check(top >= 0 and finite(top), "train.logit_scale_max", top, "a finite float >= 0 (ln 100 = 4.605)")
        n = self.max_nonfinite_steps
        check(n >= 1, "train.max_nonfinite_steps", n, "an integer >= 1")
        one_of("train.strategy", self.strategy, STRATEGIES)

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on `world_size` processes: accum_freq, or derived from
        global_batch (ConfigError, one line with the numbers and the nearest working ones, if impossible)."""
        if self.global_batch is None:
            return self.accum_freq
        total, size, per_round = self.global_batch, self.batch_size, self.batch_size * world_size
        if total % per_round:
            raise ConfigError(_no_split_message(total, size, world_size))
        derived = total // per_round
        if self.accum_freq is not None and self.accum_freq != derived:
            raise ConfigError(
                f"train.accum_freq={self.accum_freq} disagrees with train.global_batch={total}: {size} per "
                f"device x {world_size} processes x {self.accum_freq} = {per_round * self.accum_freq} "
                f"(derived: {derived}); set train.accum_freq=null to derive it, or train.global_batch=null"
            )
        return derived


def _no_split_message(total: int, size: int, world: int) -> str:
    """train.global_batch cannot be reached exactly: the nearest per-device and global batches that can."""
    per_round = size * world
    totals = [t for t in (total // per_round * per_round, (total // per_round + 1) * per_round) if t > 0]
    head = (
        f"train.global_batch={total} is not a multiple of train.batch_size={size} x {world} processes "
        f"= {per_round}"
    )
    other_totals = f"train.global_batch={' or '.join(map(str, totals))}"
    if total % world:
        whole = f"({total} / {world} is not whole)"
        return f"{head}; no train.batch_size works on {world} processes {whole}: set {other_totals}"
    per_device = total // world
    divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
    below = max((d for d in divisors if d < size), default=None)
    above = min((d for d in divisors if d > size), default=None)
    sizes = " or ".join(str(d) for d in (below, above) if d is not None)
    divisor = f"(a divisor of {total} / {world} = {per_device})"
    return f"{head}: set train.batch_size={sizes} {divisor}, or {other_totals}"


@dataclass
class CheckpointConfig:
    every_steps: int = 1000  # save every N steps (and always at the end)
    keep_last: int = 3  # older step checkpoints are deleted
    dir: str | None = None  # default: <output_dir>/checkpoints

    def __post_init__(self):
        check(self.every_steps >= 1, "checkpoint.every_steps", self.every_steps, "an integer >= 1")
        check(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, "an integer >= 1")


@dataclass
class WandbConfig:
    mode: str = "disabled"  # online | offline | disabled
    project: str = "bmca-clip"  # wandb project the run is logged to
    entity: str | None = None  # wandb team or user; null = your default entity
    name: str | None = None  # default: the run name
    tags: list[str] = field(default_factory=list)  # wandb tags of the run

    def __post_init__(self):
        one_of("logger.wandb.mode", self.mode, WANDB_MODES)


TENSORBOARD_MISSING = "logger.tensorboard=true needs tensorboard: pip install 'bmca-clip[tensorboard]'"


@dataclass
class LoggerConfig:
    progress_bar: bool = True  # tqdm bar on rank 0
    jsonl: bool = True  # one JSON line per logged step in <output_dir>/metrics.jsonl
    wandb: WandbConfig = field(default_factory=WandbConfig)  # Weights & Biases tracking (off by default)
    tensorboard: bool = False  # the metrics.jsonl scalars as TensorBoard events too (extra: tensorboard)
    tensorboard_dir: str | None = None  # where the event files go; null = <output_dir>/tensorboard

    def __post_init__(self):
        # Checked here, on every rank before anything is built, not hours later when the first line is logged.
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(TENSORBOARD_MISSING)


@dataclass
class TrainEvalConfig:
    """Zero-shot evaluation during training (each rank scores its share of the suite's tasks)."""

    # a suite name, found as eval.py's suite=<name> is (conf/suite, then hydra.searchpath's suite/), e.g.
    # demo; null = no evaluation during training
    suite: str | None = None
    every_steps: int = 1000  # evaluate every N optimizer steps, and at the last step
    data_root: str = "data"  # folder task sources are relative to
    batch_size: int = 64  # images per batch when embedding the eval sets

    def __post_init__(self):
        check(self.every_steps >= 1, "eval.every_steps", self.every_steps, "an integer >= 1")


@dataclass
class PretrainConfig:
    """What `train.py` runs: the composed groups plus where the run lives."""

    model: ModelConfig = field(default_factory=ModelConfig)  # architecture, start weights, what is frozen
    data: DataConfig = field(default_factory=DataConfig)  # training shards, filters, mixing, streaming
    optim: OptimConfig = field(default_factory=OptimConfig)  # AdamW and the lr schedule
    loss: LossConfig = field(default_factory=LossConfig)  # the contrastive loss (clip or siglip)
    train: TrainConfig = field(default_factory=TrainConfig)  # steps, batch, accumulation, precision
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # when and where to save
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # progress bar, metrics.jsonl, wandb
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)  # zero-shot eval during training
    val: ValConfig = field(default_factory=ValConfig)  # held-out pairs scored during training (loss, R@k)
    name: str = "default"  # run name; the run lives in output_dir
    output_dir: str = "runs/${name}"  # fixed per run name so that resume=latest finds it again
    resume: str | None = None  # null | latest | path to a checkpoint file
    # exact: a resume continues the checkpoint's data stream and refuses settings that would change it;
    # reset: keep weights, optimizer and step, start a fresh data stream (bmca_clip/train/resume.py)
    resume_data: str = "exact"
    # Keys of eval.py that train.py has not: the command line names where they belong (cli_args.py)
    KEY_HINTS: ClassVar[dict[str, str]] = {
        f"model.{key}": "an eval.py key (WiSE-FT blends a trained checkpoint with model.pretrained when it is "
        f"scored); train.py does not blend: pass model.{key} to eval.py with checkpoint=<this run>, or "
        "use python -m bmca_clip.wise_ft"
        for key in ("wise_ft_alpha", "wise_ft_any_base")
    }

    def __post_init__(self):
        one_of("resume_data", self.resume_data, RESUME_DATA)
        if self.loss.name == "siglip" and self.model.init_logit_bias is None:
            raise ConfigError(
                "loss.name=siglip needs a logit bias: use loss=siglip (sets model.init_logit_bias=-10)"
            )
