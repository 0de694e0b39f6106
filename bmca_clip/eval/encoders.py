"""The encoder interface that every task type scores through, and its implementation over an open_clip model.

A scorer (eval/types/) never sees the model: it asks an `Encoder` for
    images(loader)                  -> (L2-normalised image features [n, d] fp32 CPU, the loader's targets [n])
    texts(texts)                    -> L2-normalised text features [n_texts, d] fp32 CPU
    classifier(classnames, templates) -> zero-shot class weights [d, K] fp32
`ClipEncoder` computes them with the model, autocast to amp_dtype (io.autocast) and images cast to the
image tower's dtype, so a model trained with pure_bf16 (bf16 weights) is scored as it trains.
cache.CachingEncoder decorates any Encoder with the on-disk embedding cache; scorers cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import open_clip
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bmca_clip.io import autocast as autocast_context


class Encoder(Protocol):
    """What scorers receive (module docstring). amp_dtype is part of what the features are (cache.py)."""

    amp_dtype: torch.dtype | None

    def images(self, loader: DataLoader) -> tuple[Tensor, Tensor]: ...

    def texts(self, texts: Sequence[str]) -> Tensor: ...

    def classifier(self, classnames: Sequence[str], templates: Sequence[str]) -> Tensor: ...


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
    feats, targets = [], []
    dtype = input_dtype(model)
    for images, target in loader:
        with autocast_context(device, amp_dtype):
            out = model.encode_image(images.to(device, dtype, non_blocking=True), normalize=True)
        feats.append(out.float().cpu())  # .cpu() syncs with the device once per batch
        targets.append(torch.as_tensor(target))
    return torch.nn.functional.normalize(torch.cat(feats), dim=-1), torch.cat(targets)


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> Tensor:
    """L2-normalised text features [n_texts, dim], fp32 on the CPU."""
    feats = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size])).to(device)
        with autocast_context(device, amp_dtype):
            feats.append(model.encode_text(tokens, normalize=True).float().cpu())
    return torch.nn.functional.normalize(torch.cat(feats), dim=-1)


class ClipEncoder:
    """The Encoder of an open_clip model. text_batch_size counts texts per forward pass (the run's
    batch_size, as the image loader's); the classifier batches 10 classes, open_clip's usual."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable,
        device: torch.device | str,
        amp_dtype: torch.dtype | None = None,
        text_batch_size: int = 256,
    ):
        self.model, self.tokenizer, self.device = model, tokenizer, torch.device(device)
        self.amp_dtype, self.text_batch_size = amp_dtype, text_batch_size

    def images(self, loader: DataLoader) -> tuple[Tensor, Tensor]:
        return encode_images(self.model, loader, self.device, self.amp_dtype)

    def texts(self, texts: Sequence[str]) -> Tensor:
        return encode_texts(
            self.model, self.tokenizer, texts, self.device, self.text_batch_size, self.amp_dtype
        )

    def classifier(self, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
        return zero_shot_classifier(
            self.model, self.tokenizer, classnames, templates, self.device, amp_dtype=self.amp_dtype
        )
