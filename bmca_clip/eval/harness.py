"""Run tasks and suites: build each task's dataset, score it through its type, collect results.

Each task is built and scored by its type (types.TASK_TYPES: `build` through datasets.build_dataset,
then `score` through an encoders.Encoder: a ClipEncoder over the model, or the encoder the caller passes,
e.g. one decorated with the embedding cache by run.py). A task whose data or declaration is wrong (TaskError)
becomes a result with status "failed" and the message, and the suite goes on; any other exception is a
bug and propagates. Besides the metrics' own notes, a result's notes carry what the data loading
noticed (hub_commit, skipped, dropped, class_order, data_identity), `n_expected` when the loaded n differs from
the task's n_expected, and the task's own `unverified` list and `notes`.

A result carries `data`, what identifies the data scored (identity.py: the resolved hub commit and the
content fingerprint). With `reuse` (eval.py's stored results, run.py) the check for a stored result comes
after the dataset is built and before the model runs: the data is read once, and a result stored for other
data, or for data whose identity cannot be confirmed (then the log says why), is never served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from bmca_clip.errors import TaskError
from bmca_clip.eval.datasets import build_dataset
from bmca_clip.eval.encoders import ClipEncoder, Encoder
from bmca_clip.eval.identity import data_identity
from bmca_clip.eval.progress import EvalProgress, ProgressLoader
from bmca_clip.eval.spec import Suite, Task
from bmca_clip.eval.types import TASK_TYPES

log = logging.getLogger(__name__)


@dataclass
class TaskResult:
    """The outcome of one task for one model; report.py writes it as JSON (schema there)."""

    task: str
    type: str
    domain: str
    status: str  # "ok" or "failed"
    main_metric: str
    metrics: dict[str, float | None] = field(default_factory=dict)  # fractions in [0, 1]; None = undefined
    notes: dict[str, str] = field(default_factory=dict)  # why a metric is None; what loading noticed
    n: int | None = None  # number of items scored (images; crops; questions)
    chance: float | None = None  # main metric of random guessing: 1/K, or a random ranking's recall
    classes: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    source: dict = field(default_factory=dict)  # the task's source block: loader, path, split, revision...
    licence: str | None = None
    error: str | None = None
    seconds: float = 0.0
    ci: dict | None = None  # the main metric's bootstrap CI (metrics.ci_record; report.py schema)
    data: dict | None = None  # what identifies the data scored: {hub_commit, fingerprint} (identity.py)
    per_class: dict | None = None  # per-class recall, precision, support, confusion (per_class.py)
    items: dict | None = None  # the main metric's per-item inputs (paired.py), for compare.py

    @property
    def main_value(self) -> float | None:
        return self.metrics.get(self.main_metric) if self.status == "ok" else None


@dataclass(frozen=True)
class RunSettings:
    """How to run, shared by every task of a run."""

    device: torch.device
    batch_size: int = 64
    num_workers: int = 0
    amp_dtype: torch.dtype | None = None  # None = fp32
    progress: EvalProgress = field(default_factory=EvalProgress)  # a line per task, a bar per task's batches


def _loader(dataset: Dataset, run: RunSettings, task: Task) -> DataLoader:
    return ProgressLoader(
        dataset,
        progress=run.progress,
        desc=task.name,
        batch_size=run.batch_size,
        shuffle=False,
        num_workers=run.num_workers,
        pin_memory=run.device.type == "cuda",
    )


# (task, data identity) -> the stored result for exactly this config and data, or None
Reuse = Callable[[Task, dict], "TaskResult | None"]


def _data_notes(task: Task, dataset, unconfirmed: str | None) -> dict[str, str]:
    notes = dict(getattr(dataset, "notes", {}))
    if unconfirmed:
        notes["data_identity"] = f"not confirmed ({unconfirmed})"
    if task.n_expected is not None and len(dataset) != task.n_expected:
        notes["n_expected"] = f"loaded {len(dataset)} items; the task expects {task.n_expected}"
    if task.unverified:
        notes["unverified"] = ", ".join(task.unverified)
    if task.notes:
        notes["task"] = task.notes
    return notes


def _message(exc: TaskError) -> str:
    # A DataLoader worker re-raises our error with its whole traceback as the message; keep our line.
    text = str(exc)
    if "Original Traceback" in text:
        return text.strip().splitlines()[-1].split("TaskError: ", 1)[-1]
    return text


def _stored(
    task: Task, result: TaskResult, reuse: Reuse | None, unconfirmed: str | None
) -> TaskResult | None:
    if reuse is None:
        return None
    if unconfirmed:
        log.info(
            "task %s: not reusing a stored result, the data's identity is unknown: %s", task.name, unconfirmed
        )
        return None
    return reuse(task, result.data)


def _run_task(
    task: Task,
    encoder: Encoder,
    preprocess,
    data_root,
    run: RunSettings,
    reuse: Reuse | None = None,
    place: tuple[int, int] = (1, 1),
) -> tuple[TaskResult, bool]:
    """(the task's result, whether it is a stored one that reuse returned); place = (k, n): task k of n."""
    start = time.perf_counter()
    result = TaskResult(
        task=task.name,
        type=task.type,
        domain=task.domain,
        status="failed",
        main_metric=task.main_metric,
        classes=list(task.classes),
        templates=list(task.templates),
        source=asdict(task.source),
        licence=task.licence,
    )
    try:
        dataset = build_dataset(task, data_root, preprocess)
        run.progress.task(*place, task.name, len(dataset))
        result.data, unconfirmed = data_identity(task, dataset)
        stored = _stored(task, result, reuse, unconfirmed)
        if stored is not None:
            return stored, True
        scores, result.chance = TASK_TYPES[task.type].score(
            task, dataset, encoder, _loader(dataset, run, task)
        )
    except TaskError as exc:
        result.error = _message(exc)
        log.warning("task %s failed: %s", task.name, result.error)
    else:
        result.status, result.n = "ok", len(dataset)
        notes = _data_notes(task, dataset, unconfirmed)
        result.metrics, result.notes = scores.metrics, {**notes, **scores.notes}
        result.ci, result.per_class = scores.ci.get(task.main_metric), scores.per_class
        result.items = scores.items
        log.info("task %s: %s = %s (n=%d)", task.name, task.main_metric, result.main_value, result.n)
    result.seconds = round(time.perf_counter() - start, 3)
    return result, False


def evaluate_task(
    task: Task,
    model: torch.nn.Module,
    preprocess: Callable,
    tokenizer: Callable,
    device: torch.device | str,
    data_root: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
) -> TaskResult:
    """Score one task zero-shot; returns status "failed" with the message when its data is wrong."""
    return evaluate_suite(
        [task], model, preprocess, tokenizer, device, data_root, batch_size, num_workers, amp_dtype
    )[0]


def evaluate_suite(
    suite: Suite | Sequence[Task],
    model: torch.nn.Module,
    preprocess: Callable,
    tokenizer: Callable,
    device: torch.device | str,
    data_root: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
    reuse: Reuse | None = None,
    progress: EvalProgress | None = None,
    encoder: Encoder | None = None,
) -> list[TaskResult]:
    """Score every task of a suite in order. on_result(result) runs after each task scored now, e.g. to
    write its JSON at once so that a crash later keeps the finished tasks. reuse(task, data identity), when
    given, may return a stored result for the task, which is then not scored (module docstring). The model
    is put in eval mode and restored to its previous mode afterwards (so this can run mid-training).
    progress (progress.py) logs a line per task and draws its bars; by default lines only, no bar.
    encoder (encoders.py) computes the features, by default a ClipEncoder of model and tokenizer; run.py
    passes one decorated with the embedding cache (cache.CachingEncoder)."""
    tasks = suite.tasks if isinstance(suite, Suite) else tuple(suite)
    run = RunSettings(torch.device(device), batch_size, num_workers, amp_dtype, progress or EvalProgress())
    encoder = encoder or ClipEncoder(
        model, tokenizer, run.device, amp_dtype, text_batch_size=batch_size or 256
    )
    was_training = model.training
    model.eval()
    results = []
    try:
        with torch.no_grad():
            for k, task in enumerate(tasks, start=1):
                place = (k, len(tasks))
                result, stored = _run_task(task, encoder, preprocess, data_root, run, reuse, place)
                results.append(result)
                if on_result is not None and not stored:
                    on_result(result)
    finally:
        model.train(was_training)
    return results
