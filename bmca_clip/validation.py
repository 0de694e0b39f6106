"""Validation during training: the held-out pairs (data/heldout.py) scored by the model being trained, every
val.every_steps steps and at the last: the run's own contrastive loss (clip or siglip) over all of them as
one batch, and image->text and text->image R@1/5/10 among them, logged as val/<metric>.

The pairs are read once, at the first validation, and kept: the same pairs every time, on every rank and
after a resume. Each rank encodes an equal share of them (the last share padded with the last pair, so every
rank runs the same number of forward passes, as sharded training needs), in eval mode, without gradients and
under the run's precision; the features are all-gathered in pair order and every rank computes the metrics
from the same tensors on the CPU in fp32, so every rank gets the same numbers.

Ties: a wrong item that scores exactly as the right one counts as ranked before it, so a collapsed model
(every score equal) gets R@k = 0, not 1. The loss is over val.samples pairs, not the training batch: compare
it across steps and across runs with the same val.samples, not with the training loss.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as torch_dist

from bmca_clip.cadence import every
from bmca_clip.config import PretrainConfig
from bmca_clip.data.heldout import read_heldout
from bmca_clip.data.loader import http_policy
from bmca_clip.data.sources import Source
from bmca_clip.data.transforms import from_open_clip, normalize_on_device
from bmca_clip.dist import DistInfo
from bmca_clip.io import autocast, autocast_dtype, weight_dtype
from bmca_clip.loss import build_loss

log = logging.getLogger(__name__)

KS = (1, 5, 10)


def recall_at_k(similarity: torch.Tensor, ks=KS) -> dict[str, float]:
    """R@k in both directions from similarity[i, j] (image i, caption j; caption i is image i's): the share
    of queries whose right item is among the k best, ties counted against it; a k above the number of pairs
    is left out (every item would be found)."""
    sim = similarity.float()
    n, right = len(sim), sim.diagonal()
    # the items scoring at least as high as the right one, itself excluded: its rank from 0; nan: a miss
    image_rank = torch.where(right.isnan(), n, (sim >= right[:, None]).sum(1) - 1)
    text_rank = torch.where(right.isnan(), n, (sim >= right[None, :]).sum(0) - 1)
    out = {}
    for name, rank in (("image_to_text", image_rank), ("text_to_image", text_rank)):
        for k in ks:
            if k <= n:
                out[f"{name}_R@{k}"] = (rank < k).float().mean().item()
    return out


def build_validation(cfg: PretrainConfig, sources: list[Source], bundle, dist: DistInfo):
    """The validation component of this run, or None: val.every_steps=0, or no source holds shards out."""
    if cfg.val.every_steps == 0 or not any(s.heldout for s in sources):
        return None
    return PeriodicValidation(
        cfg, sources, from_open_clip(bundle.model, is_train=False), bundle.tokenizer, dist
    )


class PeriodicValidation:
    """Callable(model) -> {"val/loss", "val/image_to_text_R@k", "val/text_to_image_R@k", "val/pairs"}, the
    same on every rank (each rank must call it); `should_validate(step, last_step)`: the cadence."""

    def __init__(self, cfg: PretrainConfig, sources: list[Source], image_fn, tokenizer, dist: DistInfo):
        self.cfg, self.sources, self.image_fn, self.tokenizer, self.dist = (
            cfg,
            sources,
            image_fn,
            tokenizer,
            dist,
        )
        self.loss_fn = build_loss(cfg.loss, DistInfo())  # over the gathered pairs: one process's view
        self._share: tuple[torch.Tensor, torch.Tensor, int] | None = None  # read at the first call

    def should_validate(self, step: int, last_step: int) -> bool:
        return self.cfg.val.every_steps > 0 and every(self.cfg.val.every_steps, step, last_step)

    def share(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(uint8 images, tokens) of this rank's share, and the number of pairs in all."""
        if self._share is None:
            pairs = read_heldout(
                self.sources, self.cfg.data, self.image_fn, self.cfg.val.samples, http_policy(self.cfg.data)
            )
            n, world, rank = len(pairs.captions), self.dist.world_size, self.dist.rank
            per = math.ceil(n / world)
            mine = [min(i, n - 1) for i in range(rank * per, (rank + 1) * per)]
            self._share = (pairs.images[mine].clone(), self.tokenizer([pairs.captions[i] for i in mine]), n)
            (log.info if self.dist.is_main else log.debug)(
                "validation: %d held-out pairs (val.samples=%d), %d per rank, first %s",
                n,
                self.cfg.val.samples,
                per,
                pairs.keys[0],
            )
        return self._share

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        images, texts, n = self.share()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                image_f, text_f, scale, bias = self._encode(model, images, texts)
        finally:
            model.train(was_training)
        image_f, text_f = self._gather(image_f)[:n], self._gather(text_f)[:n]
        bias = bias.float().cpu() if bias is not None else None
        loss = self.loss_fn(image_f, text_f, scale.float().cpu(), bias)
        scores = recall_at_k(image_f @ text_f.T)
        return {"val/loss": loss.item(), **{f"val/{k}": v for k, v in scores.items()}, "val/pairs": n}

    def _encode(self, model, images: torch.Tensor, texts: torch.Tensor):
        """This rank's features (fp32, on the device), the logit scale and bias, batch by batch."""
        device, precision, size = self.dist.device, self.cfg.train.precision, self.cfg.val.batch_size
        pre = model.visual.preprocess_cfg
        image_f, text_f, out = [], [], {}
        for start in range(0, len(images), size):
            batch = normalize_on_device(
                images[start : start + size].to(device),
                pre["mean"],
                pre["std"],
                dtype=weight_dtype(precision),
            )
            with autocast(device, autocast_dtype(precision)):
                out = model(batch, texts[start : start + size].to(device))
            image_f.append(out["image_features"].float())
            text_f.append(out["text_features"].float())
        return torch.cat(image_f), torch.cat(text_f), out["logit_scale"], out.get("logit_bias")

    def _gather(self, features: torch.Tensor) -> torch.Tensor:
        """Every rank's features in rank order (= pair order), on the CPU."""
        if self.dist.world_size > 1:
            parts = [torch.empty_like(features) for _ in range(self.dist.world_size)]
            torch_dist.all_gather(parts, features.contiguous())
            features = torch.cat(parts)
        return features.cpu()
