"""What a task and a suite are: frozen dataclasses read from conf/tasks/<name>.yaml and conf/suite/<name>.yaml.

No logic lives here: tasks.py parses and checks the YAML (the keys common to every type), source_schema.py
the `source:` block, and each task type (types/) declares the keys and metrics that are its own. Loaders,
label decoders and task types import these classes; this module imports nothing of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Domains group tasks into the report's per-domain means, so a misspelling would silently add a domain.
DOMAINS = (
    "pathology",
    "radiology",
    "ophthalmology",
    "dermatology",
    "surgery",
    "molecular_biology",
    "parasitology",
    "cell_biology",
    "microscopy",
    "retrieval",
    "synthetic",
)


@dataclass(frozen=True)
class Source:
    """Where a task's data lives and how to read it (the `source:` block of a task YAML; docs/task_schema.md)."""

    loader: str  # key of loaders.LOADERS (eval/loaders/__init__.py)
    repo_id: str | None = None  # hub dataset repo (all loaders but csv)
    revision: str | None = None  # hub commit sha or branch; None = main
    path: str | None = None  # csv: folder, relative to the eval data_root unless absolute
    file: str | None = None  # csv: table inside path; default "<split>.csv"
    split: str = "test"
    config_name: str | None = None  # hf_dataset: the datasets config name
    data_files: tuple[str, ...] | None = None  # hf_parquet: glob(s) inside the repo
    archive: str | None = None  # zip_split_json: zip inside the repo
    split_file: str | None = None  # zip_split_json: JSON inside the repo, {split: [[relpath, label, name]]}
    image_column: str = "image"  # wds: the image key; "webp;jpg;png" takes the first one a sample has
    label_column: str | None = None  # classification, multilabel (wds: the label key, e.g. cls)
    caption_column: str | None = None  # retrieval
    questions_column: str | None = None  # multiple_choice: per-image {name: {question, options, answer}}
    question: str | None = None  # multiple_choice: which question of questions_column, e.g. modality
    label_encoding: str | None = None  # key of decode.LABEL_ENCODINGS; default by type and loader
    label_map: dict[str, str] | None = None  # raw label (as a string) -> class name
    filter: dict | None = None  # {column: value or [values]}: keep the rows holding one of them
    group_column: str | None = None  # rows sharing its value (a patient, a figure): one bootstrap cluster


@dataclass(frozen=True)
class Task:
    """One evaluation task, as loaded and checked from conf/tasks/<name>.yaml."""

    name: str
    type: str  # key of types.TASK_TYPES (eval/types/__init__.py)
    domain: str  # one of DOMAINS
    source: Source
    description: str = ""
    classes: tuple[str, ...] = ()  # label i -> classes[i], filled into the templates
    templates: tuple[str, ...] = ()  # format strings with one positional {}
    main_metric: str = ""  # the number the summary table shows; default by type
    metrics: tuple[str, ...] = ()  # all metrics to compute (includes main_metric); default by type
    licence: str | None = None
    n_expected: int | None = None  # the catalogue's size; a different n at load is noted in the result
    verified: bool = False  # catalogue tag [V]: columns and classes checked against the data
    unverified: tuple[str, ...] = ()  # facts not verified: "<fact> [(<detail>)]" (verify.UNVERIFIED_FACTS)
    notes: str = ""  # what a reader of the results must know (duplicates, near-chance, ...)
    train_split: Source | None = None  # the labelled items probes are fitted on (protocols.py)
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)  # k_shot: items per class of each few-shot classifier
    draws: int = 5  # k_shot: seeded draws of k items per class, for each k
    yaml_path: Path | None = field(default=None, compare=False)  # where it was read from, for messages


@dataclass(frozen=True)
class Suite:
    """A named, ordered list of tasks (conf/suite/<name>.yaml)."""

    name: str
    tasks: tuple[Task, ...]
    description: str = ""
    expect_tasks: int | None = None  # when set, loading fails unless the suite has this many tasks
    protocols: tuple[str, ...] = ("zero_shot",)  # how its classification tasks are scored (protocols.py)
    yaml_path: Path | None = field(default=None, compare=False)
