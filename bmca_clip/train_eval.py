"""Zero-shot evaluation during training: every rank scores its share of a small suite, rank 0 logs all.

Splitting the suite's tasks across ranks (the same cost-balanced split as `eval.py shard=i/n`) keeps the
pause short and busies every GPU, instead of leaving all but rank 0 idle at the barrier.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from bmca_clip.dist import DistInfo
from bmca_clip.eval.harness import evaluate_suite
from bmca_clip.eval.shard import select
from bmca_clip.eval.tasks import load_suite


class PeriodicEval:
    """Callable(model) -> {"eval/<task>": main metric, "eval/mean": mean}, the same dict on every rank."""

    def __init__(self, suite: str, data_root: str, batch_size: int, preprocess, tokenizer, dist: DistInfo):
        self.tasks = load_suite(suite).tasks  # fails at start, not mid-run, if the suite is wrong
        self.mine = (
            select(self.tasks, (dist.rank + 1, dist.world_size)) if dist.world_size > 1 else self.tasks
        )
        self.data_root, self.batch_size = data_root, batch_size
        self.preprocess, self.tokenizer, self.dist = preprocess, tokenizer, dist

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
