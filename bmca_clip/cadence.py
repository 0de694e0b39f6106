"""The one rule for "every N steps, and at the last step": checkpoints, evaluation during training and log
lines all ask it, each with its own N (checkpoint.every_steps, eval.every_steps, train.log_every)."""

from __future__ import annotations


def every(n: int | None, step: int, last_step: int) -> bool:
    """True when `step` is a multiple of `n` or is `last_step`, so a run always ends with a checkpoint,
    an evaluation and a log line. `n` None or < 1 means only the last step (the config refuses such values
    for its three cadences; this keeps a direct caller from a ZeroDivisionError)."""
    if step == last_step:
        return True
    return n is not None and n >= 1 and step % n == 0
