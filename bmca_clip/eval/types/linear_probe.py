"""Task type linear_probe: logistic regression on the frozen image features of the task's train split,
scored on its test split as zero-shot's classifier is (classification.scored): the task's metrics with
their bootstrap CIs, per-class results, and the main metric's per-item inputs for paired comparisons.

The task is a classification task with a `train_split` (tasks.py; a suite's `protocols: [linear_probe]`
derives `<task>@linear_probe` from one, protocols.py). Both splits' features come through the Encoder, so
the embedding cache (cache.py) serves the train split's features as it does the test split's.
The regularisation is chosen on a validation split carved from the train split, then the probe is refit
on all of it (probe.py). The result's notes say which l2 won and on how many items.
"""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bmca_clip.errors import TaskError
from bmca_clip.eval import probe
from bmca_clip.eval.encoders import Encoder
from bmca_clip.eval.metrics import Scores, classification_metric
from bmca_clip.eval.spec import Task
from bmca_clip.eval.types import classification
from bmca_clip.eval.types.base import TaskType

PROBE_SEED = 0  # the validation split's seed (k_shot: the draws' seeds start here)


def train_features(
    task: Task, dataset: Dataset, encoder: Encoder, loader: DataLoader
) -> tuple[Tensor, Tensor]:
    """(features, labels) of the train split that datasets.build_dataset attached to the test dataset,
    encoded in the test loader's batches and workers."""
    train = getattr(dataset, "train", None)
    if train is None:
        raise TaskError(f"task '{task.name}': type '{task.type}' needs a train_split in the task YAML")
    train_loader = DataLoader(train, batch_size=loader.batch_size, num_workers=loader.num_workers)
    feats, labels = encoder.images(train_loader)
    return feats, labels.long()


def score(task: Task, dataset: Dataset, encoder: Encoder, loader: DataLoader) -> tuple[Scores, float]:
    """The task's metrics of the probe's predictions on the test split, and chance 1/K."""
    train_feats, train_labels = train_features(task, dataset, encoder, loader)
    feats, labels = encoder.images(loader)
    n_classes = len(task.classes)
    try:
        l2, _ = probe.choose_l2(
            train_feats, train_labels, n_classes, classification_metric(task.main_metric), PROBE_SEED
        )
    except ValueError as exc:
        raise TaskError(f"task '{task.name}': train split: {exc}") from None
    fitted = probe.fit_logistic(train_feats, train_labels, n_classes, l2)
    scores, chance = classification.scored(task, fitted.logits(feats), labels.long(), dataset.clusters)
    scores.notes["probe"] = (
        f"logistic regression, l2={l2:g} chosen by {task.main_metric} on a {probe.VAL_FRACTION:.0%} "
        f"stratified validation split (seed {PROBE_SEED}), refit on all {len(train_labels)} train items"
    )
    return scores, chance


def probe_type(score_fn) -> TaskType:
    """A classification task scored by classifiers fitted on the train split's image features: the
    classification type's columns, encodings, metrics and dataset, with its own `score`; grouped, as its
    main metric has a bootstrap CI over the test items (or their clusters)."""
    return TaskType(
        columns=classification.CLASSIFICATION.columns,
        needs_prompts=True,  # class names name the labels; the templates are not used
        encodings=classification.CLASSIFICATION.encodings,
        default_metrics=classification.default_metrics,
        default_main_metric="balanced_accuracy",
        check_metric=classification.check_metric,
        build=classification.build,
        score=score_fn,
        needs_train=True,
        grouped=True,
    )


LINEAR_PROBE = probe_type(score)
