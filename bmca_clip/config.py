"""Typed configuration: one dataclass per Hydra group, registered in Hydra's ConfigStore.

The YAML files under `conf/` only hold values; the schema lives here. Because the primary configs
(`conf/pretrain.yaml`, `conf/evaluate.yaml`) start from these schemas, a misspelled key fails when Hydra
composes the config, and `to_object()` runs every `__post_init__` check, so a bad value fails before any
model is built, with the dotted key and the allowed values in the message.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from bmca_clip.data.filters import BalanceConfig, FilterConfig
from bmca_clip.data.mixing import MIXINGS
from bmca_clip.errors import ConfigError
from bmca_clip.eval.shard import parse_shard

PRECISIONS = ("fp32", "amp_bf16", "amp_fp16", "pure_bf16")
SCHEDULES = ("cosine", "constant")
LOSSES = ("clip", "siglip")
WANDB_MODES = ("online", "offline", "disabled")
DEVICES = ("auto", "cpu", "cuda")
RESUME_DATA = ("exact", "reset")


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def _finite(*values: float | None) -> bool:
    """Every value is a finite number: nan and inf compare false with < and >, so range checks miss them."""
    return all(v is None or math.isfinite(v) for v in values)


@dataclass
class ModelConfig:
    name: str = "bmca-tiny"  # open_clip architecture (ViT-L-14, ...), or an hf-hub:/local-dir: id
    pretrained: str | None = None  # open_clip tag, hf-hub:<org>/<name>, a .pt or .safetensors; null: random
    cache_dir: str | None = None  # where open_clip/huggingface_hub keep downloaded weights
    grad_checkpointing: bool = False  # recompute activations in backward to save memory
    force_image_size: int | None = None  # override the architecture's input resolution (pixels, >= 1)
    init_logit_bias: float | None = None  # add a learnable logit bias (SigLIP uses -10); null = none
    lock_image: bool = False  # freeze the image tower (LiT) ...
    lock_image_unlocked_groups: int = 0  # ... except its last N groups (projection + ln_post, blocks, ...)
    lock_text: bool = False  # freeze the text tower ...
    lock_text_unlocked_layers: int = 0  # ... except its last N groups (projection, last block + ln, ...)
    freeze: list[str] = field(default_factory=list)  # regexes: parameters whose name matches any are frozen
    wise_ft_alpha: Any = None  # eval only: blend each checkpoint with model.pretrained at alpha (or a list)
    # eval only: blend even when model.pretrained is not the weights the checkpoint's run started from (its
    # start_weights fingerprint); by default such a merge is refused
    wise_ft_any_base: bool = False

    def __post_init__(self):
        _check(bool(self.name), "model.name", self.name, "an open_clip model name such as ViT-L-14")
        bias = self.init_logit_bias
        _check(_finite(bias), "model.init_logit_bias", bias, "a finite float (SigLIP uses -10) or null")
        size = self.force_image_size
        _check(size is None or size >= 1, "model.force_image_size", size, "null or a size in pixels >= 1")
        for pattern in self.freeze:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(
                    f"model.freeze: {pattern!r} is not a valid regular expression ({err})"
                ) from None


@dataclass
class SourceConfig:
    """One place shards come from: a hub dataset repo (optionally one folder of it), or explicit shards."""

    repo_id: str | None = None  # hub dataset repo, e.g. BIOMEDICA/biomedica_webdataset_24M
    revision: str = "main"  # branch, tag or commit; resolved to a commit once and recorded in the manifest
    subset: str | None = None  # folder inside the repo, e.g. commercial; null = every .tar in the repo
    pattern: str | None = None  # brace pattern inside the repo, used when listing the repo is impossible
    shards: str | None = None  # instead of a repo: a folder, file, brace pattern or URL; '::' joins several
    weight: float = 1.0  # data.mixing=weights: share of the samples drawn; natural: raw pair count; 0 = off

    def __post_init__(self):
        _check(self.weight >= 0, "data.sources.<name>.weight", self.weight, "a float >= 0")
        _check(
            (self.repo_id is None) != (self.shards is None),
            "data.sources.<name>",
            self.repo_id or self.shards,
            "exactly one of repo_id or shards",
        )


@dataclass
class DataConfig:
    # Tar shards: a folder, a file, a brace pattern or URL ('::' joins several); shorthand for one source.
    train_shards: str | None = None
    sources: dict[str, SourceConfig] = field(default_factory=dict)  # named sources, mixed by weight
    filter: FilterConfig = field(default_factory=FilterConfig)  # which samples to keep, by metadata
    balance: BalanceConfig = field(default_factory=BalanceConfig)  # per-concept sampling weights
    # What sources.<name>.weight means: weights = each source's share of the samples drawn (after filters);
    # natural = its raw pair count, drawn in proportion to count x kept fraction (bmca_clip/data/mixing.py).
    mixing: str = "weights"
    mixing_prior_samples: int = (
        100  # natural: each kept-fraction estimate starts at 1.0, worth this many pairs
    )
    resampled: bool = True  # draw shards with replacement (no epochs); false = epochs over the shard list
    shuffle_buffer: int = 2000  # samples held in the shuffle buffer of each stream (refilled per shard)
    shuffle_initial: int = 500  # samples buffered before the first one is yielded
    num_workers: int = 2  # dataloader worker processes per rank (0 = read in the main process)
    image_key: str = "jpg"  # tar member extension of the image
    caption_key: str = "txt"  # tar member extension of the caption
    max_bad_fraction: float = 0.5  # stop with an error if more than this share of samples fails to decode
    max_bad_after: int = 500  # each data stream applies max_bad_fraction once it has read this many samples
    cache_dir: str | None = None  # where shard manifests (and, with cache_limit_gb, shards) are kept
    cache_limit_gb: float = 0.0  # local shard cache for repeated epochs; 0 = stream only, never store
    retries: int = 5  # tries per HTTP request before a shard counts as failed
    timeout_s: float = 60.0  # a transfer that delivers nothing for this long is retried
    retry_backoff_s: float = 1.0  # first retry delay; doubles per try with jitter (a longer Retry-After wins)
    max_empty_shards: int = 20  # a source whose shards give no sample this many times in a row stops training

    def __post_init__(self):
        _check(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "an integer >= 1")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")
        _check(0 < self.max_bad_fraction <= 1, "data.max_bad_fraction", self.max_bad_fraction, "in (0, 1]")
        _check(self.max_bad_after >= 1, "data.max_bad_after", self.max_bad_after, "an integer >= 1")
        # Neither set is caught where data is built (a default-constructed schema must pass); both is a mistake.
        _check(
            not (self.train_shards and self.sources),
            "data.train_shards",
            self.train_shards,
            "null when data.sources is set (one or the other)",
        )
        _check(self.retries >= 1, "data.retries", self.retries, "an integer >= 1")
        # Both pass the types but cannot work: urllib takes a timeout of 0 as non-blocking (every read fails
        # at once), and max_empty_shards=0 stops the run after its first shard, however good.
        _check(self.timeout_s > 0, "data.timeout_s", self.timeout_s, "seconds > 0")
        _check(self.retry_backoff_s >= 0, "data.retry_backoff_s", self.retry_backoff_s, "seconds >= 0")
        _check(self.max_empty_shards >= 1, "data.max_empty_shards", self.max_empty_shards, "an integer >= 1")
        _one_of("data.mixing", self.mixing, MIXINGS)
        _check(self.mixing_prior_samples >= 1, "data.mixing_prior_samples", self.mixing_prior_samples, ">= 1")


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
        _check(self.lr > 0 and _finite(self.lr), "optim.lr", self.lr, "a finite positive float")
        wd = self.weight_decay
        _check(wd >= 0 and _finite(wd), "optim.weight_decay", wd, "a finite float >= 0")
        _check(self.eps > 0 and _finite(self.eps), "optim.eps", self.eps, "a finite positive float")
        _check(
            0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,  # false for nan
            "optim.beta1/beta2",
            (self.beta1, self.beta2),
            "in [0, 1)",
        )
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "an integer >= 0")
        _one_of("optim.schedule", self.schedule, SCHEDULES)
        _check(0 <= self.lr_min <= self.lr, "optim.lr_min", self.lr_min, "between 0 and optim.lr")
        clip = self.grad_clip_norm
        _check(clip is None or clip > 0, "optim.grad_clip_norm", clip, "a positive float or null")


@dataclass
class LossConfig:
    name: str = "clip"  # contrastive loss: open_clip's ClipLoss
    local_loss: bool = True  # each rank computes logits for its own samples against all (saves memory)
    gather_with_grad: bool = True  # gather features with gradients (required for exact local_loss)

    def __post_init__(self):
        _one_of("loss.name", self.name, LOSSES)


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

    def __post_init__(self):
        _check(self.steps >= 1, "train.steps", self.steps, "an integer >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        accum, total = self.accum_freq, self.global_batch
        _check(accum is None or accum >= 1, "train.accum_freq", accum, "an integer >= 1 or null")
        _check(total is None or total >= 1, "train.global_batch", total, "an integer >= 1 or null")
        if accum is None and total is None:
            self.accum_freq = 1
        _one_of("train.precision", self.precision, PRECISIONS)
        _check(
            0 <= self.pure_bf16_max_stalled <= 1,
            "train.pure_bf16_max_stalled",
            self.pure_bf16_max_stalled,
            "a share in [0, 1]",
        )
        _one_of("train.device", self.device, DEVICES)
        # numpy's global seed (train.py seed_everything) takes 0 .. 2**32 - 1 only.
        _check(0 <= self.seed < 2**32, "train.seed", self.seed, "an integer in [0, 2**32)")
        _check(self.log_every >= 1, "train.log_every", self.log_every, "an integer >= 1")
        top = self.logit_scale_max  # a log: exp(top) is the largest logit scale; below 0 it inverts CLIP's
        _check(
            top >= 0 and _finite(top), "train.logit_scale_max", top, "a finite float >= 0 (ln 100 = 4.605)"
        )
        n = self.max_nonfinite_steps
        _check(n >= 1, "train.max_nonfinite_steps", n, "an integer >= 1")

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
        _check(self.every_steps >= 1, "checkpoint.every_steps", self.every_steps, "an integer >= 1")
        _check(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, "an integer >= 1")


@dataclass
class WandbConfig:
    mode: str = "disabled"  # online | offline | disabled
    project: str = "bmca-clip"  # wandb project the run is logged to
    entity: str | None = None  # wandb team or user; null = your default entity
    name: str | None = None  # default: the run name
    tags: list[str] = field(default_factory=list)  # wandb tags of the run

    def __post_init__(self):
        _one_of("logger.wandb.mode", self.mode, WANDB_MODES)


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

    suite: str | None = None  # a suite name (conf/suite), e.g. demo; null = no evaluation during training
    every_steps: int = 1000  # and at the last step
    data_root: str = "data"  # folder task sources are relative to
    batch_size: int = 64  # images per batch when embedding the eval sets

    def __post_init__(self):
        _check(self.every_steps >= 1, "eval.every_steps", self.every_steps, "an integer >= 1")


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
    name: str = "default"  # run name; the run lives in output_dir
    output_dir: str = "runs/${name}"  # fixed per run name so that resume=latest finds it again
    resume: str | None = None  # null | latest | path to a checkpoint file
    # exact: a resume continues the checkpoint's data stream and refuses settings that would change it;
    # reset: keep weights, optimizer and step, start a fresh data stream (bmca_clip/train/resume.py)
    resume_data: str = "exact"

    def __post_init__(self):
        _one_of("resume_data", self.resume_data, RESUME_DATA)
        if self.loss.name == "siglip" and self.model.init_logit_bias is None:
            raise ConfigError(
                "loss.name=siglip needs a logit bias: use loss=siglip (sets model.init_logit_bias=-10)"
            )


@dataclass
class EvaluateConfig:
    """What `eval.py` runs: a suite of tasks over one or more checkpoints of one architecture."""

    # the architecture the checkpoints share; model.pretrained: the weights scored for checkpoint=null and
    # the WiSE-FT base
    model: ModelConfig = field(default_factory=ModelConfig)
    suite: Any = MISSING  # the suite group (conf/suite/<name>.yaml): its name and task list
    checkpoint: Any = None  # a checkpoint path, a list of them, or null for the model as configured
    data_root: str = "data"  # folder that task sources are relative to
    output_dir: str = "runs/eval/${suite.name}"  # per-task JSON and the summary go here
    batch_size: int = 64  # images (or texts) per forward pass
    num_workers: int = 0  # dataloader worker processes that decode the eval images (0 = main process)
    device: str = "auto"  # auto | cpu | cuda; auto picks cuda when available
    seed: int = 0  # seeds the model init: as train.seed, an untrained model is the one training started from
    precision: str = "fp32"  # fp32 | amp_bf16 | amp_fp16: autocast dtype of both encoders
    cache_dir: str | None = "~/.cache/bmca_clip/eval"  # embedding cache (<cache_dir>/embeddings); null = off
    rerun: bool = False  # score every task again, even one whose stored JSON has the same config_hash
    shard: str | None = None  # "i/n" (1 <= i <= n): score the i-th of n shares; null: Slurm array or all
    progress_bar: bool = True  # a tqdm bar per task on stderr, on a terminal only (logs: a line per task)

    def __post_init__(self):
        _one_of("device", self.device, DEVICES)
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _one_of("precision", self.precision, ("fp32", "amp_bf16", "amp_fp16"))
        if self.shard is not None:
            parse_shard(self.shard)

    @property
    def checkpoints(self) -> list[str | None]:
        if self.checkpoint is None or isinstance(self.checkpoint, str):
            return [self.checkpoint]
        return list(self.checkpoint)


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
