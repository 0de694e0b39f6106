"""The task types, one module each, and TASK_TYPES: the one registry of them (type name -> TaskType).

    classification.py   zero-shot classification (one label per image or per box crop)
    multiple_choice.py  closed VQA: each image has its own options and one answer
    multilabel.py       every class present or absent in every image (segmentation masks): mAP
    retrieval.py        image-text recall@k in both directions
    linear_probe.py     logistic regression on frozen image features of the task's train split (probe.py)
    k_shot.py           few-shot linear probes: k items per class, several seeded draws, mean and spread

Each module declares its TaskType (base.py): the YAML keys and metrics that are its own, how it builds
its Dataset (items.py shapes) and how it scores through an encoders.Encoder. tasks.py, source_schema.py,
datasets.py and harness.py look a type up here and never name one. A new type (e.g. a linear probe): one
module declaring its TaskType, plus one line below.
"""

from __future__ import annotations

from bmca_clip.eval.types.base import TaskType
from bmca_clip.eval.types.classification import CLASSIFICATION
from bmca_clip.eval.types.k_shot import K_SHOT
from bmca_clip.eval.types.linear_probe import LINEAR_PROBE
from bmca_clip.eval.types.multilabel import MULTILABEL
from bmca_clip.eval.types.multiple_choice import MULTIPLE_CHOICE
from bmca_clip.eval.types.retrieval import RETRIEVAL

# The order is that of error messages listing the types.
TASK_TYPES: dict[str, TaskType] = {
    "classification": CLASSIFICATION,
    "multiple_choice": MULTIPLE_CHOICE,
    "multilabel": MULTILABEL,
    "retrieval": RETRIEVAL,
    "linear_probe": LINEAR_PROBE,
    "k_shot": K_SHOT,
}
