"""Zero-shot evaluation during training: every rank scores its share of a small suite, rank 0 logs all.

Splitting the suite's tasks across ranks (the same cost-balanced split as `eval.py shard=i/n`) keeps the
pause short and busies every GPU, instead of leaving all but rank 0 idle at the barrier.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from bmca_clip.cadence import every
from bmca_clip.config import TrainEvalConfig
from bmca_clip.dist import DistInfo
from bmca_clip.eval.harness import evaluate_suite
from bmca_clip.eval.shard import select
from bmca_clip.eval.suite import suite_config, suite_from_config


def load_eval_tasks(cfg: TrainEvalConfig) -> list | None:
    """The tasks of eval.suite, or None when it is null. Called before the run opens its folder, logger
    or model, so a misspelt suite or a bad task YAML stops the start, not the run at its first eval.
    The name is looked up and built as eval.py's suite=<name> is (eval/suite.py)."""
    return suite_from_config(suite_config(cfg.suite)).tasks if cfg.suite else None


class PeriodicEval:
    """Callable(model) -> {"eval/<task>": main metric, "eval/mean": mean}, the same dict on every rank;
    `should_eval(step, last_step)`: every eval.every_steps steps and at the last."""

    def __init__(self, tasks: list, cfg: TrainEvalConfig, preprocess, tokenizer, dist: DistInfo):
        self.tasks, self.every_steps = tasks, cfg.every_steps
        self.mine = (
            select(self.tasks, (dist.rank + 1, dist.world_size)) if dist.world_size > 1 else self.tasks
        )
        self.data_root, self.batch_size = cfg.data_root, cfg.batch_size
        self.preprocess, self.tokenizer, self.dist = preprocess, tokenizer, dist

    def should_eval(self, step: int, last_step: int) -> bool:
        return every(self.every_steps, step, last_step)

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        results = evaluate_suite(
            self.mine,
            model,
            self.preprocess,
            self.tokenizer,
            self.dist.device,
            self.data_root,
            batch_size=self.batch_size,
        )
        values = {f"eval/{r.task}": r.main_value for r in results if r.main_value is not None}
        if self.dist.world_size > 1:
            gathered = [None] * self.dist.world_size
            torch_dist.all_gather_object(gathered, values)
            values = {k: v for part in gathered for k, v in part.items()}
        if values:
            values["eval/mean"] = sum(values.values()) / len(values)
        return values
