"""Where metrics go: a progress bar, a JSONL file, wandb and TensorBoard, from rank 0 only."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import sys
from pathlib import Path

from tqdm import tqdm

from bmca_clip.cadence import every
from bmca_clip.config import TENSORBOARD_MISSING, ConfigError, LoggerConfig
from bmca_clip.extras import require
from bmca_clip.io import atomic_write, unlink_symlink
from bmca_clip.redact import redact_config, redact_url

log = logging.getLogger(__name__)

# The data counters the console line shows: samples lost and shards or requests that failed. The normal
# flow (decoded, kept, drawn/<source>, read/<source>, shards_from_cache) goes to JSONL and wandb only.
TROUBLE_PREFIXES = ("data/skipped/", "data/filtered/", "data/shards_failed/", "data/retries")


class MetricLogger:
    """Console progress bar, `metrics.jsonl`, wandb and TensorBoard behind one `log(step, metrics)` call.

    Constructing one only checks the settings; the sinks open when it is entered (`with logger:`, as
    bmca_clip.train.run does once everything else is built) or at its first line, and `close()` (the
    `with` block's end) closes whatever opened, also when opening failed part-way."""

    def __init__(
        self,
        cfg: LoggerConfig,
        out_dir: Path,
        *,
        total_steps: int,
        start_step: int,
        run_name: str,
        config: dict,
        enabled: bool = True,
        log_every: int = 1,
    ):
        self.cfg, self.out_dir, self.total_steps, self.start_step = (
            cfg,
            Path(out_dir),
            total_steps,
            start_step,
        )
        self.run_name, self.config, self.enabled, self.log_every = run_name, config, enabled, log_every
        self.bar = self.jsonl = self.wandb_run = self.tensorboard = None
        self._opened = False
        if enabled:
            check_wandb(cfg)  # before any file is opened

    def should_log(self, step: int, last_step: int) -> bool:
        """Every train.log_every steps and at the last; the same answer on every rank (enabled or not),
        because a log line starts with a collective (the ranks agree on the loss)."""
        return every(self.log_every, step, last_step)

    def open(self) -> MetricLogger:
        """Open the sinks the config asks for (once); on a failure part-way, close those already open."""
        if self._opened or not self.enabled:
            return self
        self._opened = True
        cfg, out_dir = self.cfg, self.out_dir
        try:
            if cfg.progress_bar:
                self.bar = tqdm(
                    total=self.total_steps,
                    initial=self.start_step,
                    desc="train",
                    unit="step",
                    dynamic_ncols=True,
                )
            if cfg.jsonl:
                path = out_dir / "metrics.jsonl"
                unlink_symlink(path)  # appending through a link would write into another run's history
                self.jsonl = open(path, "a", encoding="utf-8")
            if cfg.wandb.mode != "disabled":
                self.wandb_run = _start_wandb(cfg, out_dir, self.run_name, self.config)
            if cfg.tensorboard:
                self.tensorboard = _start_tensorboard(cfg, out_dir, self.start_step)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> MetricLogger:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.open()  # a logger used without `with` opens at its first line
        # The console gets the headline numbers and any data trouble; every counter goes to JSONL and wandb.
        main = {k: v for k, v in metrics.items() if "/" not in k or k.startswith(("eval/", "val/"))}
        trouble = {k[5:]: v for k, v in metrics.items() if k.startswith(TROUBLE_PREFIXES)}
        line = f"step {step}: " + "  ".join(f"{k}={_fmt(v)}" for k, v in main.items())
        if trouble:
            line += "  data: " + " ".join(f"{k}={v:g}" for k, v in trouble.items())
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{metrics.get('loss', float('nan')):.4f}", lr=f"{metrics.get('lr', 0):.2e}"
            )
            self.bar.write(line)
        else:
            log.info(line)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self.jsonl.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if self.tensorboard is not None:
            _log_tensorboard(self.tensorboard, step, metrics)

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def close(self) -> None:
        """Close every open sink, each once: the wandb run finishes even if closing another sink failed."""
        sinks = (self.bar, self.jsonl, self.tensorboard)
        run, self.bar, self.jsonl, self.wandb_run, self.tensorboard = self.wandb_run, None, None, None, None
        try:
            for sink in sinks:
                if sink is not None:
                    sink.close()
        finally:
            if run is not None:
                run.finish()


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def check_wandb(cfg: LoggerConfig) -> None:
    """ConfigError naming the wandb extra when logger.wandb.mode needs wandb and it is not installed."""
    if cfg.wandb.mode != "disabled":
        require("wandb", f"logger.wandb.mode={cfg.wandb.mode}", "wandb", "wandb")


def _start_wandb(cfg: LoggerConfig, out_dir: Path, run_name: str, config: dict):
    import wandb  # imported late: it is slow to import and most test runs never use it

    # The run id is stored beside the run, so a restarted job continues the same wandb run.
    id_file = Path(out_dir) / "wandb_run_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    atomic_write(id_file, run_id)
    with _redacted_argv():  # wandb projects are often shared: never credentials in shard URLs
        return wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            name=cfg.wandb.name or run_name,
            tags=list(cfg.wandb.tags),
            mode=cfg.wandb.mode,
            dir=str(out_dir),
            id=run_id,
            resume="allow",
            config=redact_config(config),
        )


def _start_tensorboard(cfg: LoggerConfig, out_dir: Path, start_step: int):
    """A SummaryWriter on logger.tensorboard_dir (default <output_dir>/tensorboard). A resumed run appends
    to the same folder, and purge_step makes TensorBoard drop what the earlier run logged after the step
    this one resumes from (those steps are run, and logged, again; start_step itself is done and kept)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (an extra)
    except ImportError:
        raise ConfigError(TENSORBOARD_MISSING) from None
    folder = Path(cfg.tensorboard_dir) if cfg.tensorboard_dir else Path(out_dir) / "tensorboard"
    return SummaryWriter(log_dir=str(folder), purge_step=start_step + 1 if start_step else None)


def _log_tensorboard(writer, step: int, metrics: dict) -> None:
    """The numbers of one metrics.jsonl line under the same names, flushed at once: a checkpoint written
    right after (or a preempted job) never leaves steps only in memory."""
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(name, value, global_step=step)
    writer.flush()


@contextlib.contextmanager
def _redacted_argv():
    """wandb.init records the command line (its run metadata `args`, read from sys.argv): it sees the
    redacted one, and the process gets its own back."""
    argv = sys.argv[:]
    sys.argv[:] = [redact_url(arg) for arg in argv]
    try:
        yield
    finally:
        sys.argv[:] = argv
