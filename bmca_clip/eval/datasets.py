"""One task's data: its loader's Table, filtered by source.filter, built into its type's Dataset.

The loaders are in eval/loaders/ (LOADERS), the Dataset shapes in items.py, and each type's builder in
its module under eval/types/ (TASK_TYPES). The dataset's notes start with what the loader noticed (the
hub commit read, ...), and the builder's notes come after. A type that needs_train gets the task's
train_split built the same way, as the dataset's `train` (types/linear_probe.py, types/k_shot.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from torch.utils.data import Dataset

from bmca_clip.eval.loaders import LOADERS
from bmca_clip.eval.loaders.table import apply_filter
from bmca_clip.eval.spec import Task
from bmca_clip.eval.types import TASK_TYPES


def build_dataset(task: Task, data_root: str | Path, preprocess: Callable) -> Dataset:
    """The task's dataset, read by its source.loader; TaskError when the data does not match the task."""
    table = apply_filter(task, LOADERS[task.source.loader].read(task, data_root))
    dataset = TASK_TYPES[task.type].build(task, table, preprocess)
    dataset.notes = {**table.notes, **dataset.notes}
    if TASK_TYPES[task.type].needs_train and task.train_split is not None:
        train = replace(task, source=task.train_split)
        train_table = apply_filter(train, LOADERS[train.source.loader].read(train, data_root))
        dataset.train = TASK_TYPES[task.type].build(train, train_table, preprocess)
        # As for the test split: the commit read, which identity.py checks against the hub's.
        dataset.train.notes = {**train_table.notes, **dataset.train.notes}
    return dataset
