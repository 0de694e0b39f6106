"""Task type multiple_choice, closed VQA (µ-Bench perception): every image has its own list of options and one answer.

The text of option j is `question + " " + option_j`, embedded as is (eVLLM's CLIP protocol: one prompt per
option, no template ensemble); the prediction is the option most similar to the image. Items share
option lists (one per source dataset), so each distinct text is encoded once.

Metrics: `accuracy`, and `balanced_accuracy`, the mean over answers (the correct option's text) of
the accuracy on the items with that answer, so that a frequent answer does not dominate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bmca_clip.errors import TaskError
from bmca_clip.eval.bootstrap import group_ids
from bmca_clip.eval.decode import parse_question
from bmca_clip.eval.encoders import Encoder
from bmca_clip.eval.items import ImageQuestionDataset, bad_cells
from bmca_clip.eval.loaders.table import Table
from bmca_clip.eval.metrics import NON_FINITE, Scores
from bmca_clip.eval.paired import choice_items
from bmca_clip.eval.per_class import per_class_record
from bmca_clip.eval.spec import Task
from bmca_clip.eval.types.base import TaskType
from bmca_clip.eval.weighted import hit_rate, macro_hit_rate

METRIC_NAMES = ("accuracy", "balanced_accuracy")
NOT_AN_ANSWER = "(an option that is no item's answer)"  # the per-class confusion matrix's extra column
DEFAULT_METRICS = METRIC_NAMES


def check_metric(name: str) -> None:
    if name not in METRIC_NAMES:
        raise KeyError(f"unknown multiple_choice metric '{name}'; allowed: {', '.join(METRIC_NAMES)}")


def option_texts(
    questions: Sequence[str], options: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[int]]]:
    """The distinct prompt texts, and for each item the index of each of its options' text among them."""
    position: dict[str, int] = {}
    index = [
        [position.setdefault(f"{q} {o}", len(position)) for o in opts]
        for q, opts in zip(questions, options, strict=True)
    ]
    return list(position), index


def choose(
    image_feats: Tensor, text_feats: Tensor, index: Sequence[Sequence[int]], chunk: int = 4096
) -> Tensor:
    """For each item, the position in its own option list of the option text most similar to its image.

    image_feats [n, d] and text_feats [n_texts, d]; index[i] lists item i's option texts. Ties go to
    the earlier option. Similarities are computed chunk images at a time against all distinct texts.
    """
    width = max(len(row) for row in index)
    padded = torch.tensor([[*row, *([-1] * (width - len(row)))] for row in index], dtype=torch.long)
    picks = []
    for start in range(0, len(index), chunk):
        sim = image_feats[start : start + chunk].double() @ text_feats.double().T
        rows = padded[start : start + chunk]
        scores = sim.gather(1, rows.clamp(min=0)).masked_fill(rows < 0, -torch.inf)
        picks.append(scores.argmax(dim=1))
    return torch.cat(picks)


def multiple_choice_metrics(
    names: Sequence[str], preds: Tensor, answers: Tensor, answer_texts: Sequence[str]
) -> Scores:
    """The named metrics of predicted option positions against the answers' positions.

    answer_texts[i] is item i's correct option (the class that balanced_accuracy averages over). Both
    are weighted statistics (weighted.py): the share of hits, and its mean over the answers."""
    if answers.numel() == 0:
        return Scores.undefined(names, "no items")
    hits = preds == answers
    compute: dict[str, Callable[[], float]] = {
        "accuracy": lambda: hit_rate(hits),
        "balanced_accuracy": lambda: macro_hit_rate(hits, group_ids(answer_texts)),
    }
    scores = Scores()
    for name in names:
        scores.record(name, compute[name])
    return scores


def per_answer_record(chosen: Sequence[str], answer_texts: Sequence[str]) -> dict:
    """Per-class results (per_class.py) with the distinct answers as classes, in order of first
    appearance: a chosen option that is no item's answer falls in the confusion matrix's extra column."""
    classes = list(dict.fromkeys(answer_texts))
    index = {text: k for k, text in enumerate(classes)}
    preds = torch.tensor([index.get(text, len(classes)) for text in chosen])
    labels = torch.tensor([index[text] for text in answer_texts])
    return per_class_record(preds, labels, classes, extra_column=NOT_AN_ANSWER)


def chance_accuracy(options: Sequence[Sequence[str]]) -> float:
    """Expected accuracy of picking one of each item's options at random."""
    return sum(1 / len(o) for o in options) / len(options)


def build(task: Task, table: Table, preprocess: Callable) -> Dataset:
    """Items (image, item index), one per row holding the question; rows whose question is null skipped."""
    cells, name = table.column(task, "questions_column"), task.source.question
    rows, items, errors = [], [], []  # items: (question, options, answer index)
    for i, cell in enumerate(cells):
        try:
            item = parse_question(cell, name)
        except KeyError as exc:  # the question is not there at all: a declaration mistake, not one bad row
            raise TaskError(
                f"task '{task.name}': {table.where} column '{task.source.questions_column}' {table.row(i)}: "
                f"{exc.args[0]} (source.question)"
            ) from None
        except ValueError as exc:
            errors.append(f"{table.row(i)}: {exc}")
            continue
        if item is not None:
            rows.append(i)
            items.append(item)
    if errors:
        raise bad_cells(task, table, task.source.questions_column, errors, "question")
    if not rows:
        raise TaskError(f"task '{task.name}': {table.where}: no row has a '{name}' question")
    images = table.image_column(task).select(rows)
    questions, options, answers = zip(*items, strict=True)
    dataset = ImageQuestionDataset(images, questions, options, answers, preprocess, task.name)
    if len(rows) < len(cells):
        dataset.notes["skipped"] = (
            f"{len(cells) - len(rows)} of {len(cells)} images have a null '{name}' question"
        )
    return dataset


def score(
    task: Task, dataset: ImageQuestionDataset, encoder: Encoder, loader: DataLoader
) -> tuple[Scores, float]:
    """The metrics of the option each image is most similar to, and the chance of a random pick."""
    questions, options, answers = dataset.questions, dataset.options, dataset.answers
    image_feats, order = encoder.images(loader)
    image_feats = image_feats[order.argsort()]  # back to dataset order, whatever the loader did
    texts, index = option_texts(questions, options)
    text_feats = encoder.texts(texts)
    if not (torch.isfinite(image_feats).all() and torch.isfinite(text_feats).all()):
        return Scores.undefined(task.metrics, NON_FINITE), chance_accuracy(options)
    preds = choose(image_feats, text_feats, index)
    answer_texts = [opts[a] for opts, a in zip(options, answers, strict=True)]
    answer_index = torch.tensor(list(answers))
    scores = multiple_choice_metrics(task.metrics, preds, answer_index, answer_texts)
    chosen = [opts[p] for opts, p in zip(options, preds.tolist(), strict=True)]
    scores.per_class = per_answer_record(chosen, answer_texts)
    if scores.metrics.get(task.main_metric) is not None:  # for paired comparisons (paired.py)
        scores.items = choice_items(task.main_metric, preds == answer_index, group_ids(answer_texts))
    return scores, chance_accuracy(options)


MULTIPLE_CHOICE = TaskType(
    columns=("image_column", "questions_column", "question"),
    needs_prompts=False,
    encodings=(),
    default_metrics=lambda task: DEFAULT_METRICS,
    default_main_metric="accuracy",
    check_metric=lambda name, task: check_metric(name),
    build=build,
    score=score,
    needs_structured=True,
)
