"""Task type retrieval: image-text recall@k in both directions when each image has one or more captions.

Metric names say the direction: `image_to_text_R@k` (query an image, hit when ANY of its captions ranks
in the top k of all captions) and `text_to_image_R@k` (query a caption, hit when its own image ranks in
the top k of all images). CLIP_benchmark's `image_retrieval_recall@k` means text->image; we avoid that
name because readers take it the other way round.

Ties follow CLIP_benchmark (`clip_benchmark/metrics/zeroshot_retrieval.py`, `recall_at_k`): per query,
the k gallery items are torch.topk's k indices of its score row, and the query is a hit when any of them
is a positive. So an exact duplicate of the right image (or caption) takes a top-k place only when topk
puts it before the right one, and our numbers equal CLIP_benchmark's on the same score matrix, ties
included. Which of several exactly tied items topk returns first is torch's choice (it differs with the
gallery size, and may differ across torch versions and devices); the scores are computed as
CLIP_benchmark does (texts @ images.T, fp32) and ranked on the CPU, and the result's `ties` note counts
the queries whose best match ties exactly with a wrong item, i.e. whose hit rests on that order.
R@k is None (with a note) where k exceeds the gallery, so the default R@100 appears only where it means
something. Each recall carries a percentile-bootstrap 95% CI that resamples images, each bringing all
its captions (a cluster bootstrap: captions of one image are not independent), or the task's
`source.group_column` clusters (e.g. all images of one patient or figure); the gallery stays fixed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bmca_clip.errors import TaskError
from bmca_clip.eval.bootstrap import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    Clusters,
    bootstrap_intervals,
)
from bmca_clip.eval.encoders import Encoder
from bmca_clip.eval.items import ImageCaptionDataset, item_clusters
from bmca_clip.eval.loaders.table import Table
from bmca_clip.eval.metrics import NON_FINITE, Scores
from bmca_clip.eval.paired import hit_items
from bmca_clip.eval.spec import Task
from bmca_clip.eval.types.base import TaskType
from bmca_clip.eval.weighted import hit_rate

DIRECTIONS = ("image_to_text", "text_to_image")
DEFAULT_KS = (1, 5, 10, 100)
DEFAULT_METRICS = tuple(f"{d}_R@{k}" for d in DIRECTIONS for k in DEFAULT_KS)
RETRIEVAL_METRIC_NAMES = tuple(f"{d}_R@<k>" for d in DIRECTIONS)
_QUERY_BATCH = 4096  # queries ranked at once: bounds the copy of their score rows
_RECALL = re.compile(r"(image_to_text|text_to_image)_R@([1-9][0-9]*)")


def parse_recall_metric(name: str) -> tuple[str, int]:
    """(direction, k) of a metric name such as `text_to_image_R@5`; KeyError naming the allowed forms."""
    match = _RECALL.fullmatch(name)
    if not match:
        raise KeyError(f"unknown retrieval metric '{name}'; allowed: {', '.join(RETRIEVAL_METRIC_NAMES)}")
    return match[1], int(match[2])


def _positives(text_to_image: Tensor, n_images: int) -> Tensor:
    if text_to_image.ndim != 1 or (text_to_image < 0).any() or (text_to_image >= n_images).any():
        raise ValueError(f"text_to_image must hold image indices in [0, {n_images}), one per text")
    positive = text_to_image[None, :] == torch.arange(n_images)[:, None]  # [n_images, n_texts]
    orphans = (~positive.any(dim=1)).nonzero().flatten().tolist()
    if orphans:
        raise ValueError(f"images {orphans[:5]} have no caption; every image needs at least one")
    return positive


def retrieval_recall(similarity: Tensor, text_to_image: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Recall@k in both directions from a similarity matrix [n_images, n_texts].

    text_to_image[j] is the index of the image that caption j belongs to. Returns
    `{"image_to_text_R@k": float, "text_to_image_R@k": float, ...}`; the value is None where k exceeds
    that direction's gallery (n_texts for image->text, n_images for text->image), since every item
    would then count as found.
    """
    hits = recall_hits(similarity, text_to_image, ks)
    return {name: None if hit is None else hit_rate(hit) for name, hit in hits.items()}


def _topk_hits(scores: Tensor, is_positive: Callable[[Tensor, Tensor], Tensor], k: int) -> Tensor:
    """Per query row of scores [n_queries, n_gallery], whether any of torch.topk's k indices is a
    positive (is_positive(rows, top indices) -> bool [b, k]): CLIP_benchmark's recall_at_k > 0."""
    hits = []
    for start in range(0, len(scores), _QUERY_BATCH):
        rows = torch.arange(start, min(start + _QUERY_BATCH, len(scores)))
        top = torch.topk(scores[rows].contiguous(), k, dim=1).indices
        hits.append(is_positive(rows, top).any(dim=1))
    return torch.cat(hits)


def recall_hits(similarity: Tensor, text_to_image: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Per query, whether it is a hit: `{"image_to_text_R@k": bool [n_images], "text_to_image_R@k":
    bool [n_texts], ...}`, None where k exceeds the gallery (see retrieval_recall). Tied scores are
    ranked in torch.topk's order, as CLIP_benchmark does (module docstring)."""
    sim = similarity.cpu()
    text_to_image = text_to_image.long().cpu()
    n_images, n_texts = sim.shape
    positive = _positives(text_to_image, n_images)  # [n_images, n_texts]
    out: dict[str, Tensor | None] = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (
            _topk_hits(sim, lambda rows, top: positive[rows].gather(1, top), k) if k <= n_texts else None
        )
    for k in ks:
        out[f"text_to_image_R@{k}"] = (
            _topk_hits(sim.T, lambda rows, top: top == text_to_image[rows, None], k)
            if k <= n_images
            else None
        )
    return out


def tie_note(similarity: Tensor, text_to_image: Tensor) -> str | None:
    """How many queries have a wrong item scoring exactly as their best match (so their hits rest on
    torch.topk's order among ties), or None when none has; for the result's notes."""
    sim, owner = similarity.cpu(), text_to_image.long().cpu()
    n_images, n_texts = sim.shape
    positive = _positives(owner, n_images)
    images = texts = 0
    for start in range(0, n_images, _QUERY_BATCH):
        rows, pos = sim[start : start + _QUERY_BATCH], positive[start : start + _QUERY_BATCH]
        best = rows.masked_fill(~pos, -math.inf).max(dim=1, keepdim=True).values
        images += ((rows == best) & ~pos).any(dim=1).sum().item()
    for start in range(0, n_texts, _QUERY_BATCH):
        columns = sim[:, start : start + _QUERY_BATCH]
        own = columns.gather(0, owner[None, start : start + _QUERY_BATCH])
        texts += ((columns == own).sum(dim=0) > 1).sum().item()
    if not images and not texts:
        return None
    return (
        f"{images} of {n_images} image queries and {texts} of {n_texts} text queries have a wrong item "
        "scoring exactly as their best match (duplicate images or captions?); tied items are ranked in "
        "torch.topk's order, as CLIP_benchmark does"
    )


def recall_intervals(
    hits: dict,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    text_to_image: Tensor | None = None,
    image_clusters: Clusters | None = None,
) -> dict[str, dict]:
    """Bootstrap CI (bootstrap.ci_record) of each defined recall in hits (from recall_hits).

    Given text_to_image, text queries are resampled by image (each drawn image brings all its captions),
    or by image_clusters (cluster of each image, e.g. a patient) when given; image queries by
    image_clusters, else one by one. Without text_to_image, every query is resampled on its own.
    """
    out = {}
    for direction in DIRECTIONS:
        names = [name for name, hit in hits.items() if name.startswith(direction) and hit is not None]
        if not names:
            continue
        # Queries with the same hits at every k are interchangeable: resample these few patterns.
        _, pattern = torch.unique(torch.stack([hits[n] for n in names], dim=1), dim=0, return_inverse=True)
        reps = torch.full((int(pattern.max()) + 1,), len(pattern)).scatter_reduce_(
            0, pattern, torch.arange(len(pattern)), "amin"
        )
        stats = {name: partial(hit_rate, hits[name][reps]) for name in names}
        clusters = image_clusters
        if direction == "text_to_image" and text_to_image is not None:
            image = clusters or Clusters(torch.arange(int(text_to_image.max()) + 1), "image")
            clusters = Clusters(image.ids[text_to_image.long()], image.name)  # a caption joins its image
        elif direction == "text_to_image":
            clusters = None
        unit, groups = (clusters.unit, clusters.ids) if clusters is not None else ("query", None)
        out |= bootstrap_intervals(stats, pattern, unit, n_resamples, seed, groups)
    return out


def chance_recall(text_to_image: Tensor, n_images: int, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Expected recall@k of a uniformly random ranking, for the report's chance column."""
    positive = _positives(text_to_image.long().cpu(), n_images)
    n_texts = positive.shape[1]
    per_image = positive.sum(dim=1).tolist()
    out: dict[str, float | None] = {}
    for k in ks:
        # A random top-k of n_texts misses all p captions with probability C(n-p, k) / C(n, k).
        miss = [math.comb(n_texts - p, k) / math.comb(n_texts, k) for p in per_image] if k <= n_texts else []
        out[f"image_to_text_R@{k}"] = 1 - sum(miss) / len(miss) if miss else None
        out[f"text_to_image_R@{k}"] = k / n_images if k <= n_images else None
    return out


def recall_scores(
    encoder: Encoder,
    loader: DataLoader,
    captions: Sequence[Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    image_clusters: Clusters | None = None,
    main: str | None = None,
) -> Scores:
    """Named recall metrics for the images in loader (items: image, image index) and their captions,
    each with a bootstrap CI (n_resamples=0: none) over resampled images, each with its captions, or
    over image_clusters (cluster of each image) when given; a `ties` note counts tie-dependent queries."""
    image_feats, index = encoder.images(loader)
    image_feats = image_feats[index.argsort()]  # back to dataset order, whatever the loader did
    texts = [c for caps in captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], dtype=torch.long)
    text_feats = encoder.texts(texts)
    # CLIP_benchmark's product and orientation (texts @ images.T), so its ties are ours (docstring).
    similarity = (text_feats @ image_feats.T).T
    if not torch.isfinite(similarity).all():
        return Scores.undefined(metrics, NON_FINITE)
    ks = sorted({parse_recall_metric(name)[1] for name in metrics})
    hits = recall_hits(similarity, owner, ks)
    scores = Scores()
    for name in metrics:
        direction = parse_recall_metric(name)[0]
        gallery = len(texts) if direction == "image_to_text" else len(captions)
        scores.record(name, lambda name=name: None if hits[name] is None else hit_rate(hits[name]))
        if hits[name] is None:
            scores.notes[name] = f"k exceeds the gallery of {gallery} items, so recall would be trivially 1"
    if (note := tie_note(similarity, owner)) is not None:
        scores.notes["ties"] = note
    defined = {name: hits[name] for name in metrics}
    scores.ci = recall_intervals(defined, n_resamples, seed, owner, image_clusters)
    if main is not None and hits.get(main) is not None:  # main's per-query hits, for paired.py
        scores.items = hit_items(main, hits[main], query_clusters(main, owner, image_clusters))
    return scores


def query_clusters(metric: str, owner: Tensor, image_clusters: Clusters | None) -> Clusters | None:
    """What the bootstrap of metric's queries draws (as recall_intervals): a caption joins its image."""
    if parse_recall_metric(metric)[0] == "image_to_text":
        return image_clusters
    image = image_clusters or Clusters(torch.arange(int(owner.max()) + 1), "image")
    return Clusters(image.ids[owner.long()], image.name)


def build(task: Task, table: Table, preprocess: Callable) -> ImageCaptionDataset:
    """Items (image, image index), one per distinct image, each with all the captions of its rows."""
    images, column = table.image_column(task), task.source.caption_column
    by_image: dict[str, tuple[int, list[str]]] = {}  # insertion order = first appearance
    for i, cell in enumerate(table.column(task, "caption_column")):
        captions = [
            c.strip()
            for c in (cell if isinstance(cell, list) else [cell])
            if isinstance(c, str) and c.strip()
        ]
        if not captions:
            raise TaskError(f"task '{task.name}': {table.where} {table.row(i)}: empty '{column}'")
        by_image.setdefault(images.describe(i), (i, []))[1].extend(captions)
    rows = [row for row, _ in by_image.values()]
    dataset = ImageCaptionDataset(
        images.select(rows), [caps for _, caps in by_image.values()], preprocess, task.name
    )
    dataset.clusters = item_clusters(task, table, rows)  # None: the harness clusters captions by image
    return dataset


def score(
    task: Task, dataset: ImageCaptionDataset, encoder: Encoder, loader: DataLoader
) -> tuple[Scores, float | None]:
    """Recall in both directions, and a random ranking's recall at the main metric's k."""
    scores = recall_scores(
        encoder,
        loader,
        dataset.captions,
        task.metrics,
        image_clusters=dataset.clusters,
        main=task.main_metric,
    )
    _, k = parse_recall_metric(task.main_metric)
    return scores, chance_recall(dataset.text_to_image, len(dataset), [k])[task.main_metric]


RETRIEVAL = TaskType(
    columns=("image_column", "caption_column"),
    needs_prompts=False,
    encodings=(),
    default_metrics=lambda task: DEFAULT_METRICS,
    default_main_metric="text_to_image_R@1",
    check_metric=lambda name, task: parse_recall_metric(name),
    build=build,
    score=score,
    grouped=True,
)
