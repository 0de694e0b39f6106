"""Closed-VQA scoring (µ-Bench perception): every image has its own list of options and one answer.

The text of option j is `question + " " + option_j`, embedded as is (eVLLM's CLIP protocol: one prompt per
option, no template ensemble); the prediction is the option most similar to the image. Items share
option lists (one per source dataset), so each distinct text is encoded once.

Metrics: `accuracy`, and `balanced_accuracy`, the mean over answers (the correct option's text) of
the accuracy on the items with that answer, so that a frequent answer does not dominate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bmca_clip.eval.bootstrap import group_ids
from bmca_clip.eval.metrics import NON_FINITE, Scores
from bmca_clip.eval.retrieval import encode_texts
from bmca_clip.eval.weighted import hit_rate, macro_hit_rate
from bmca_clip.eval.zeroshot import encode_images

METRIC_NAMES = ("accuracy", "balanced_accuracy")
DEFAULT_METRICS = METRIC_NAMES


def check_metric(name: str) -> None:
    if name not in METRIC_NAMES:
        raise KeyError(f"unknown multiple_choice metric '{name}'; allowed: {', '.join(METRIC_NAMES)}")


def parse_question(cell, name: str) -> tuple[str, list[str], int] | None:
    """(question, options, answer index) of question `name` in one questions cell, a mapping (or its
    JSON) {name: {question, options, answer}} as µ-Bench's `questions` column; None when it is null.

    The answer may be an index into the options or the option itself. KeyError when the cell has no
    such question at all; ValueError when the entry is malformed."""
    if isinstance(cell, str):
        cell = json.loads(cell)
    if cell is None:
        return None
    if not isinstance(cell, dict):
        raise ValueError(f"expected a mapping of questions, got {str(cell)[:120]}")
    if name not in cell:
        raise KeyError(f"no question '{name}'; the cell has {sorted(cell)}")
    entry = cell[name]
    if not entry or entry.get("question") is None:
        return None
    question, options, answer = entry["question"], entry.get("options"), entry.get("answer")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise ValueError(f"options must be a list of at least 2 strings, got {options!r}")
    if isinstance(answer, str) and answer in options:
        return question, options, options.index(answer)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        return question, options, answer
    raise ValueError(f"answer {answer!r} is neither an index into nor one of its {len(options)} options")


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


def chance_accuracy(options: Sequence[Sequence[str]]) -> float:
    """Expected accuracy of picking one of each item's options at random."""
    return sum(1 / len(o) for o in options) / len(options)


def evaluate_multiple_choice(
    model: torch.nn.Module,
    tokenizer: Callable,
    loader: DataLoader,
    questions: Sequence[str],
    options: Sequence[Sequence[str]],
    answers: Sequence[int],
    device: torch.device,
    metrics: Sequence[str] = DEFAULT_METRICS,
    amp_dtype: torch.dtype | None = None,
) -> Scores:
    """Named metrics for the images in loader (items: image, item index) and their option lists."""
    image_feats, order = encode_images(model, loader, device, amp_dtype)
    image_feats = image_feats[order.argsort()]  # back to dataset order, whatever the loader did
    texts, index = option_texts(questions, options)
    text_feats = encode_texts(model, tokenizer, texts, device, loader.batch_size or 256, amp_dtype)
    if not (torch.isfinite(image_feats).all() and torch.isfinite(text_feats).all()):
        return Scores.undefined(metrics, NON_FINITE)
    preds = choose(image_feats, text_feats, index)
    answer_texts = [opts[a] for opts, a in zip(options, answers, strict=True)]
    return multiple_choice_metrics(metrics, preds, torch.tensor(list(answers)), answer_texts)
