"""What an evaluation tells its user while it runs: a log line per task and a bar per task's batches.

Each task gets one INFO line when its data is loaded ("task 2 of 40: pcam, 32768 images"), which is what
a Slurm log keeps. On a terminal, the task's image batches also drive a tqdm bar on stderr; a bar is
drawn only when stderr is a TTY (and `progress_bar` is on), because a bar redrawn in a log file is one
line per refresh. The harness hands each task type's scorer a `ProgressLoader`, so no scorer knows about bars,
and a cached task (no batch runs) draws none.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader
from tqdm import tqdm

log = logging.getLogger("bmca_clip.eval.harness")  # the harness's lines: one logger to follow


class EvalProgress:
    """Per-task lines and, when `bar` is on and stderr is a terminal, a tqdm bar per task's batches."""

    def __init__(self, bar: bool = False, on_batch: Callable[[str], None] | None = None):
        self.bar, self.on_batch = bar, on_batch

    def task(self, k: int, n: int, name: str, items: int) -> None:
        log.info("task %d of %d: %s, %d images", k, n, name, items)

    @contextlib.contextmanager
    def batches(self, desc: str, total: int) -> Iterator[Callable[[], None]]:
        """A tick() to call once per batch done; the bar (if any) is closed when the block ends."""
        shown = self.bar and sys.stderr.isatty()
        bar = tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=True, disable=not shown)

        def tick() -> None:
            bar.update(1)
            if self.on_batch is not None:
                self.on_batch(desc)

        try:
            yield tick
        finally:
            bar.close()


class ProgressLoader(DataLoader):
    """A DataLoader that reports each batch its consumer has finished to an EvalProgress."""

    def __init__(self, dataset, *, progress: EvalProgress, desc: str, **kwargs):
        super().__init__(dataset, **kwargs)
        self.progress, self.desc = progress, desc

    def __iter__(self):
        with self.progress.batches(self.desc, len(self)) as tick:
            for batch in super().__iter__():
                yield batch
                tick()
