"""Split a suite across jobs: `python eval.py suite=all shard=2/4` scores the second of four shares.

`shard=i/n` counts i from 1 to n. When shard is unset and a Slurm job array is running
(SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are set), the share is the array task's position in the
array: (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP + 1 of COUNT, so
`--array=0-3` and `--array=1-4` both give shares 1/4 .. 4/4.

Shares are balanced by a static cost per task, its expected number of images (`n_expected`, or
DEFAULT_COST when the task does not say; probe variants add their train split, TRAIN_PER_TEST times as
many): images dominate the time, since a task's prompts number in the tens or hundreds. Tasks are
assigned greedily, the most expensive first, each to the share with the least cost so far (longest
processing time first, within 4/3 of the best possible split). The result depends only on the suite,
so every job of an array computes the same split without talking to the others; each share keeps the
suite's order. `python -m bmca_clip.eval.merge` combines the shares.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from bmca_clip.errors import TaskShardError

DEFAULT_COST = 5000  # images assumed for a task without n_expected: a mid-sized test set of the catalogue
# n_expected counts test images; a probe's train split is ~3.5x that (MedMNIST's 7:1:2 train:val:test).
TRAIN_PER_TEST = 3.5
PROBE_TYPES = ("linear_probe", "k_shot")
_SPEC = re.compile(r"([0-9]+)/([0-9]+)")


ShardError = TaskShardError  # the old name, kept for code that imports it


def parse_shard(spec: str, key: str = "shard") -> tuple[int, int]:
    """(i, n) from "i/n" with 1 <= i <= n; TaskShardError naming key otherwise."""
    match = _SPEC.fullmatch(str(spec).strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise TaskShardError(f"{key}={spec!r} is invalid: expected i/n with 1 <= i <= n, e.g. shard=1/4")
    return int(match[1]), int(match[2])


def shard_from_env(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(i, n) of a Slurm array task (see the module docstring), or None outside a job array."""
    if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
        return None
    try:
        task_id, count = int(environ["SLURM_ARRAY_TASK_ID"]), int(environ["SLURM_ARRAY_TASK_COUNT"])
        first, step = (
            int(environ.get("SLURM_ARRAY_TASK_MIN", 0)),
            int(environ.get("SLURM_ARRAY_TASK_STEP", 1)),
        )
    except ValueError as exc:
        raise TaskShardError(
            f"SLURM_ARRAY_* variables are not integers ({exc}); pass shard=i/n instead"
        ) from None
    position, off_grid = divmod(task_id - first, step)
    if off_grid or not 0 <= position < count:
        raise TaskShardError(
            f"SLURM_ARRAY_TASK_ID={task_id} is not on a regular array of {count} tasks from {first} in steps "
            f"of {step}; pass shard=i/n explicitly"
        )
    return position + 1, count


def resolve_shard(spec: str | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """The share to run: from spec ("i/n"), else from a Slurm array, else None (the whole suite)."""
    return parse_shard(spec) if spec is not None else shard_from_env(environ)


def task_cost(task) -> float:
    """Static cost of a task: its expected number of images, DEFAULT_COST when unknown; a probe
    (linear_probe, k_shot) also encodes its train split, TRAIN_PER_TEST times the test split's size."""
    n = getattr(task, "n_expected", None)
    cost = float(n) if n else float(DEFAULT_COST)
    return cost * (1 + TRAIN_PER_TEST) if getattr(task, "type", None) in PROBE_TYPES else cost


def assign(costs: Sequence[float], n_shards: int) -> list[list[int]]:
    """Indices of costs per shard, by longest processing time first; ties go to the earlier item and
    the lower shard, so the split is a pure function of the costs. Each shard's indices are sorted."""
    if n_shards < 1:
        raise TaskShardError(f"cannot split into {n_shards} shards; need at least 1")
    loads, shards = [0.0] * n_shards, [[] for _ in range(n_shards)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        lightest = min(range(n_shards), key=lambda s: (loads[s], s))
        loads[lightest] += costs[index]
        shards[lightest].append(index)
    return [sorted(s) for s in shards]


def select(tasks: Sequence, shard: tuple[int, int] | None) -> tuple:
    """The tasks of share shard = (i, n) in suite order; all of them when shard is None."""
    if shard is None:
        return tuple(tasks)
    i, n = shard
    return tuple(tasks[k] for k in assign([task_cost(t) for t in tasks], n)[i - 1])
