"""Image-text retrieval: recall@k in both directions when each image has one or more captions.

Metric names say the direction: `image_to_text_R@k` (query an image, hit when ANY of its captions ranks
in the top k of all captions) and `text_to_image_R@k` (query a caption, hit when its own image ranks in
the top k of all images). CLIP_benchmark's `image_retrieval_recall@k` means text->image; we avoid that
name because readers take it the other way round.

Ties are broken against the correct item: a hit needs fewer than k wrong items scoring at least as high
as the best correct one. A model that scores everything equally therefore gets recall near 0, not 1.
R@k is None (with a note) where k exceeds the gallery, so the default R@100 appears only where it means
something. Each recall carries a percentile-bootstrap 95% CI over resampled queries (the gallery fixed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bmca_clip.eval.cache import CachedModel
from bmca_clip.eval.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    NON_FINITE,
    Scores,
    bootstrap_intervals,
    mean_statistic,
)
from bmca_clip.eval.zeroshot import autocast_context, encode_images

DIRECTIONS = ("image_to_text", "text_to_image")
DEFAULT_KS = (1, 5, 10, 100)
DEFAULT_METRICS = tuple(f"{d}_R@{k}" for d in DIRECTIONS for k in DEFAULT_KS)
RETRIEVAL_METRIC_NAMES = tuple(f"{d}_R@<k>" for d in DIRECTIONS)
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
    return {name: None if hit is None else hit.double().mean().item() for name, hit in hits.items()}


def recall_hits(similarity: Tensor, text_to_image: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Per query, whether it is a hit: `{"image_to_text_R@k": bool [n_images], "text_to_image_R@k":
    bool [n_texts], ...}`, None where k exceeds the gallery (see retrieval_recall)."""
    sim = similarity.double().cpu()
    text_to_image = text_to_image.long().cpu()
    n_images, n_texts = sim.shape
    positive = _positives(text_to_image, n_images)
    best_positive = sim.masked_fill(~positive, -math.inf).max(dim=1).values
    # Wrong captions scoring >= the image's best caption: they all rank at or above it.
    i2t_wrong_above = ((sim >= best_positive[:, None]) & ~positive).sum(dim=1)
    own_score = sim[text_to_image, torch.arange(n_texts)]
    t2i_wrong_above = (sim >= own_score[None, :]).sum(dim=0) - 1  # minus the caption's own image
    out: dict[str, Tensor | None] = {}
    for direction, wrong_above, gallery in (
        ("image_to_text", i2t_wrong_above, n_texts),
        ("text_to_image", t2i_wrong_above, n_images),
    ):
        for k in ks:
            out[f"{direction}_R@{k}"] = wrong_above < k if k <= gallery else None
    return out


def recall_intervals(
    hits: dict, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, dict]:
    """Bootstrap CI (metrics.ci_record) of each defined recall in hits (from recall_hits), resampling
    the queries of its direction."""
    out = {}
    for direction in DIRECTIONS:
        names = [name for name, hit in hits.items() if name.startswith(direction) and hit is not None]
        if not names:
            continue
        # Queries with the same hits at every k are interchangeable: resample these few patterns.
        patterns, sizes = torch.unique(
            torch.stack([hits[n] for n in names], dim=1), dim=0, return_counts=True
        )
        stats = {name: mean_statistic(patterns[:, i]) for i, name in enumerate(names)}
        out |= bootstrap_intervals(stats, sizes, "query", n_resamples, seed)
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


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> Tensor:
    """L2-normalised text features [n_texts, dim], fp32 on the CPU (from the cache for a CachedModel)."""
    if isinstance(model, CachedModel):
        return model.text_features(
            texts,
            amp_dtype,
            lambda: encode_texts(model.model, tokenizer, texts, device, batch_size, amp_dtype),
        )
    feats = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size])).to(device)
        with autocast_context(device, amp_dtype):
            feats.append(model.encode_text(tokens, normalize=True).float().cpu())
    return torch.nn.functional.normalize(torch.cat(feats), dim=-1)


def evaluate_retrieval(
    model: torch.nn.Module,
    tokenizer: Callable,
    loader: DataLoader,
    captions: Sequence[Sequence[str]],
    device: torch.device,
    metrics: Sequence[str] = DEFAULT_METRICS,
    amp_dtype: torch.dtype | None = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Scores:
    """Named recall metrics for the images in loader (items: image, image index) and their captions,
    each with a bootstrap CI over resampled queries (n_resamples=0: none)."""
    image_feats, index = encode_images(model, loader, device, amp_dtype)
    image_feats = image_feats[index.argsort()]  # back to dataset order, whatever the loader did
    texts = [c for caps in captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], dtype=torch.long)
    text_feats = encode_texts(model, tokenizer, texts, device, loader.batch_size or 256, amp_dtype)
    similarity = image_feats @ text_feats.T
    if not torch.isfinite(similarity).all():
        return Scores.undefined(metrics, NON_FINITE)
    ks = sorted({parse_recall_metric(name)[1] for name in metrics})
    hits = recall_hits(similarity, owner, ks)
    scores = Scores()
    for name in metrics:
        direction = parse_recall_metric(name)[0]
        gallery = len(texts) if direction == "image_to_text" else len(captions)
        scores.record(
            name, lambda name=name: None if hits[name] is None else hits[name].double().mean().item()
        )
        if hits[name] is None:
            scores.notes[name] = f"k exceeds the gallery of {gallery} items, so recall would be trivially 1"
    scores.ci = recall_intervals({name: hits[name] for name in metrics}, n_resamples, seed)
    return scores
