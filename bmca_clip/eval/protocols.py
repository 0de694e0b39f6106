"""Train splits and protocols: what the few-shot and linear-probe task types (types/linear_probe.py,
types/k_shot.py) read from a task YAML, and how a suite asks for them.

Task keys (checked here, called by tasks.py):
    train_split  a mapping of source keys laid over the task's `source:` (e.g. `{file: train.csv, split:
                 train}` or `{split: train}`): the labelled items the probes are fitted on. Only for
                 classification tasks and the types that need it; those types refuse a task without it.
    shots        k_shot: the k values (items per class), default [1, 2, 4, 8, 16]
    draws        k_shot: seeded draws of k items per class for each k, default 5

Suite key `protocols` (default [zero_shot]): each classification task of the suite with a train_split is
scored once per protocol: zero_shot as the task itself, linear_probe and k_shot as `<task>@<protocol>`,
the same task of that type in domain `<domain>@<protocol>`, so the summary names them apart and its
per-domain rows average one protocol each (its means over all tasks and domains cover the zero-shot
scores only: summary.overall_tasks). Tasks a protocol cannot apply to (no
train_split, or not classification) are scored zero-shot only when zero_shot is asked, and logged.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from bmca_clip.errors import TaskError
from bmca_clip.eval.checks import check_choice, fail, string_list
from bmca_clip.eval.source_schema import parse_source
from bmca_clip.eval.spec import Task
from bmca_clip.eval.types import TASK_TYPES

log = logging.getLogger(__name__)

PROTOCOLS = ("zero_shot", "linear_probe", "k_shot")
PROBED_TYPE = "classification"  # the type whose tasks the probe protocols derive from


def _positive_int(file: Path, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(file, key, f"expected a positive integer, got {value!r}")
    return value


def parse_train_keys(file: Path, raw: dict) -> dict:
    """raw with train_split parsed into a Source and shots/draws checked; TaskError naming the key."""
    task_type = TASK_TYPES[raw["type"]]
    if "train_split" in raw:
        if raw["type"] != PROBED_TYPE and not task_type.needs_train:
            raise fail(file, "train_split", f"not used by '{raw['type']}' tasks; remove it")
        if not isinstance(raw["train_split"], dict) or "loader" in raw["train_split"]:
            raise fail(file, "train_split", "expected a mapping of source keys (not loader) laid over source")
        merged = {**raw["source"], **raw["train_split"]}
        try:
            source = parse_source(file, merged, raw["type"], raw["classes"])
        except TaskError as exc:
            raise TaskError(str(exc).replace("key 'source.", "key 'train_split.")) from None
        raw = {**raw, "train_split": source}
    elif task_type.needs_train:
        raise fail(file, "train_split", f"'{raw['type']}' tasks need one (the items the probe is fitted on)")
    if "shots" in raw:
        shots = raw["shots"]
        if not isinstance(shots, list) or not shots:
            raise fail(file, "shots", f"expected a non-empty list of positive integers, got {shots!r}")
        raw = {**raw, "shots": tuple(sorted({_positive_int(file, "shots", k) for k in shots}))}
    if "draws" in raw:
        _positive_int(file, "draws", raw["draws"])
    return raw


def parse_protocols(origin: Path, raw: dict) -> tuple[str, ...]:
    """The suite's protocols (default zero_shot only), checked."""
    names = string_list(origin, "protocols", raw.get("protocols") or ["zero_shot"])
    for name in names:
        check_choice(origin, "protocols", name, PROTOCOLS)
    if len(set(names)) != len(names):
        raise fail(origin, "protocols", f"lists a protocol more than once: {list(names)}")
    return names


def expand(tasks: tuple[Task, ...], protocols: tuple[str, ...]) -> tuple[Task, ...]:
    """Each task once per protocol that applies to it (module docstring), in suite order."""
    out, skipped = [], []
    for task in tasks:
        for protocol in protocols:
            if protocol == "zero_shot":
                out.append(task)
            elif task.type == PROBED_TYPE and task.train_split is not None:
                tag = f"@{protocol}"
                out.append(
                    dataclasses.replace(task, name=task.name + tag, type=protocol, domain=task.domain + tag)
                )
            else:
                skipped.append(f"{task.name}@{protocol}")
    if skipped:
        log.info("no train_split (or not classification), not scored: %s", ", ".join(skipped))
    return tuple(out)
