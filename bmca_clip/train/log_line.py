"""What a training log line holds besides the loss: throughput over the steps since the last line, and
the data counters, checked against data.max_bad_fraction (too much undecodable data stops the run)."""

from __future__ import annotations

import time

from bmca_clip.data.counters import DataCounters
from bmca_clip.data.loader import TrainLoader
from bmca_clip.errors import DataError


class StepWindow:
    """Wall time, data-wait time and steps since the last log line."""

    def __init__(self):
        self.start, self.data_time, self.steps = time.perf_counter(), 0.0, 0

    def rates(self, per_step: int, world_size: int) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        total = per_step * self.steps / elapsed
        return {
            "samples_per_s": total,
            "samples_per_s_per_device": total / world_size,
            "data_wait_fraction": self.data_time / elapsed,
        }


def checked_data_counters(loader: TrainLoader, max_bad_fraction: float) -> dict[str, float]:
    """Data counters for the log line; raises DataError when too much of the data fails to decode."""
    counters = loader.counters()
    if not isinstance(counters, DataCounters):  # a loader that keeps its counts by flat name
        counters = DataCounters.from_flat(counters)
    bad, seen = counters.bad, counters.seen
    if seen >= 100 and bad / seen > max_bad_fraction:
        failing = {f"skipped/{k}": n for k, n in counters.skipped.items()}
        failing |= {f"shards_failed/{k}": n for k, n in counters.shards_failed.items()}
        raise DataError(
            f"{bad} of the last {seen} samples could not be decoded ({failing}); above data.max_bad_fraction="
            f"{max_bad_fraction}. Check the shards (data.train_shards / data.sources) before training on what is left."
        )
    return counters.as_metrics()
