"""Zero-shot classification: prompt-ensemble class weights from open_clip, then logits and metrics.

Also holds the image-encoding loop and the autocast switch (from io.py) that retrieval.py shares; images
are cast to the image tower's dtype, so a model trained with pure_bf16 (bf16 weights) is scored as it trains.
Given a cache.CachedModel, the class weights and image features come from its embedding cache when stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import open_clip
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bmca_clip.eval.bootstrap import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Clusters
from bmca_clip.eval.cache import CachedModel
from bmca_clip.eval.metrics import DEFAULT_METRICS, Scores, compute_classification_metrics
from bmca_clip.io import autocast as autocast_context  # retrieval.py imports it from here


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype images must have for the image tower: its weights' (bf16 for a model trained with
    pure_bf16, whose patch convolution refuses fp32 input outside autocast), fp32 otherwise."""
    tower = getattr(model, "visual", model)
    return next((p.dtype for p in tower.parameters() if p.is_floating_point()), torch.float32)


def zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str,
    batch_size: int = 10,
    amp_dtype: torch.dtype | None = None,
) -> Tensor:
    """Class weights [embed_dim, n_classes]: per class, embed every template filled with the class name,
    L2-normalise, average, L2-normalise again.

    This is open_clip.build_zero_shot_classifier itself, so numbers match open_clip's own zero-shot eval.
    Templates are format strings with one positional `{}`. batch_size counts classes per forward pass
    (each brings len(templates) prompts); amp_dtype, when given, autocasts like the image side.
    """
    if isinstance(model, CachedModel):
        return model.classifier(
            classnames,
            templates,
            amp_dtype,
            lambda: zero_shot_classifier(
                model.model, tokenizer, classnames, templates, device, batch_size, amp_dtype
            ),
        )
    with torch.no_grad(), autocast_context(torch.device(device), amp_dtype):
        weights = open_clip.build_zero_shot_classifier(
            model,
            tokenizer=tokenizer,
            classnames=list(classnames),
            templates=list(templates),
            num_classes_per_batch=batch_size,
            device=device,
        )
    return weights.float()


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """L2-normalised image features [n, dim] (fp32, CPU) and the loader's second item (labels or ids)."""
    if isinstance(model, CachedModel):
        return model.image_features(
            loader.dataset, amp_dtype, lambda: encode_images(model.model, loader, device, amp_dtype)
        )
    feats, targets = [], []
    dtype = input_dtype(model)
    for images, target in loader:
        with autocast_context(device, amp_dtype):
            out = model.encode_image(images.to(device, dtype, non_blocking=True), normalize=True)
        feats.append(out.float().cpu())  # .cpu() syncs with the device once per batch
        targets.append(torch.as_tensor(target))
    return torch.nn.functional.normalize(torch.cat(feats), dim=-1), torch.cat(targets)


def classification_logits(
    model: torch.nn.Module,
    classifier: Tensor,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits [n, n_classes] = 100 * normalised image features @ classifier, and labels [n].

    100 is CLIP's usual fixed scale; it changes no argmax or ranking, only softmax sharpness.
    """
    feats, labels = encode_images(model, loader, device, amp_dtype)
    return 100.0 * feats @ classifier.float().cpu(), labels.long()


def evaluate_classification(
    model: torch.nn.Module,
    classifier: Tensor,
    loader: DataLoader,
    device: torch.device,
    metrics: Sequence[str] = DEFAULT_METRICS,
    amp_dtype: torch.dtype | None = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    clusters: Clusters | None = None,
) -> Scores:
    """The named metrics (see metrics.py) of zero-shot predictions on loader's (image, label) items,
    each with a bootstrap CI over resampled items, or over their clusters when given (n_resamples=0:
    none)."""
    logits, labels = classification_logits(model, classifier, loader, device, amp_dtype)
    return compute_classification_metrics(metrics, logits, labels, n_resamples, seed, clusters)
