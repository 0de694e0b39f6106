"""TaskType: everything one kind of task declares, in one object that its own module builds.

A type says which YAML keys it needs (its source columns, whether it takes classes and templates, the
label encodings that make its labels), which metrics it knows and reports by default, its chance level,
how it builds its Dataset from a loader's Table, and how it scores that dataset through an
encoders.Encoder. tasks.py and source_schema.py check a YAML against it, datasets.py calls `build`, the
harness calls `score`; none of them names a type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.data import DataLoader, Dataset

    from bmca_clip.eval.encoders import Encoder
    from bmca_clip.eval.loaders.table import Table
    from bmca_clip.eval.metrics import Scores
    from bmca_clip.eval.spec import Task


@dataclass(frozen=True)
class TaskType:
    """One task type (module docstring); the registry is types.TASK_TYPES."""

    columns: tuple[str, ...]  # source keys that must be set (columns, and the question to ask)
    needs_prompts: bool  # classes and templates required (else not allowed)
    encodings: tuple[str, ...]  # label encodings that make its labels (none: label_encoding not allowed)
    default_metrics: Callable[[dict], tuple[str, ...]]  # from the task's YAML mapping
    default_main_metric: str
    check_metric: Callable[[str, dict], object]  # (name, the task's YAML mapping); KeyError with the reason
    # (task, the loader's Table, preprocess) -> its Dataset; TaskError when the data does not fit the task
    build: Callable[[Task, Table, Callable], Dataset]
    # (task, dataset, encoder, loader over the dataset) -> (scores, chance level of the main metric)
    score: Callable[[Task, Dataset, Encoder, DataLoader], tuple[Scores, float | None]]
    grouped: bool = False  # its results carry bootstrap CIs, so source.group_column means something
    needs_structured: bool = False  # reads lists or mappings from its columns (not only text)
    classes_may_be_unknown: bool = False  # classes may be left out while "class names" is unverified
    needs_train: bool = False  # scores with the task's train_split too (datasets.py attaches it as .train)
