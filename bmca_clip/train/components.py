"""What a Trainer is handed at construction besides its model: the checkpointer, the metric logger, the
evaluator, the validator and the preemption handler. bmca_clip/train/run.py builds them from the config; each decides itself
when it acts, by one rule (bmca_clip/cadence.py): `should_save` / `should_log` / `should_eval(step, last_step)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if (
    TYPE_CHECKING
):  # annotations only: train/evaluation.py loads the eval harness, which a run without a suite skips
    from bmca_clip.checkpoint import Checkpointer
    from bmca_clip.tracking import MetricLogger
    from bmca_clip.train.evaluation import PeriodicEval
    from bmca_clip.train.preemption import PreemptionHandler
    from bmca_clip.validation import PeriodicValidation


@dataclass(frozen=True)
class Components:
    """The Trainer's parts, fixed at construction; a test that only drives train_step leaves them out."""

    checkpointer: Checkpointer | None = None  # needed by train() and save()
    logger: MetricLogger | None = None  # needed by train()
    evaluator: PeriodicEval | None = None  # None: eval.suite is null, no evaluation during training
    preemption: PreemptionHandler | None = None  # None: a signal keeps its default action
    validator: PeriodicValidation | None = None  # None: no held-out shards, or val.every_steps=0
