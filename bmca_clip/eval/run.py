"""`run(cfg)` behind eval.py: evaluate one suite for each requested checkpoint and print one comparison."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from bmca_clip.checkpoint import resolve_checkpoint
from bmca_clip.config import ConfigError, EvaluateConfig
from bmca_clip.dist import pick_device
from bmca_clip.eval.harness import TaskResult, evaluate_suite
from bmca_clip.eval.report import format_table, make_provenance, write_summary, write_task_json
from bmca_clip.eval.tasks import load_suite
from bmca_clip.model import build_model
from bmca_clip.wise_ft import blend, check_alpha, load_state

log = logging.getLogger(__name__)


def _label(cfg: EvaluateConfig, checkpoint: Path | None) -> str:
    if checkpoint is None:
        return (
            f"{cfg.model.name}:{cfg.model.pretrained}"
            if cfg.model.pretrained
            else f"{cfg.model.name} (untrained)"
        )
    return str(checkpoint)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


def _weights(cfg: EvaluateConfig, checkpoint: Path | None, initial: dict):
    """(label, state dict, provenance extras) for one requested checkpoint: as is, or blended with the
    initial weights (model.pretrained) at each WiSE-FT alpha."""
    label = _label(cfg, checkpoint)
    if checkpoint is None:
        yield label, initial, {}
        return
    tuned = load_state(str(checkpoint), cfg.model)
    if cfg.model.wise_ft_alpha is None:
        yield label, tuned, {}
        return
    if not cfg.model.pretrained:
        raise ConfigError("model.wise_ft_alpha blends with the base weights: set model.pretrained to them")
    alphas = (
        cfg.model.wise_ft_alpha
        if isinstance(cfg.model.wise_ft_alpha, (list, tuple))
        else [cfg.model.wise_ft_alpha]
    )
    for alpha in map(check_alpha, alphas):
        yield f"{label} (WiSE-FT {alpha:g})", blend(initial, tuned, alpha), {"wise_ft_alpha": alpha}


def run(cfg: EvaluateConfig) -> dict[str, list[TaskResult]]:
    device = pick_device(cfg.device, 0)
    out_dir = Path(cfg.output_dir)
    checkpoints = [None if c is None else resolve_checkpoint(c) for c in cfg.checkpoints]
    suite = load_suite(cfg.suite["name"])
    # The same seed as training, so an untrained model here is the very initialisation training started from.
    torch.manual_seed(cfg.seed)
    bundle = build_model(cfg.model, device)
    initial = {k: v.detach().clone() for k, v in bundle.model.state_dict().items()}
    results: dict[str, list[TaskResult]] = {}
    for checkpoint in checkpoints:
        for label, state, extra in _weights(cfg, checkpoint, initial):
            log.info("evaluating %s on suite %s", label, suite.name)
            bundle.model.load_state_dict(state)
            provenance = (
                make_provenance(
                    cfg.model.name, device, pretrained=cfg.model.pretrained, checkpoint=checkpoint
                )
                | extra
            )
            folder = out_dir / _slug(label)
            results[label] = evaluate_suite(
                suite,
                bundle.model,
                bundle.preprocess_eval,
                bundle.tokenizer,
                device,
                cfg.data_root,
                batch_size=cfg.batch_size,
                num_workers=cfg.num_workers,
                on_result=lambda result, folder=folder, provenance=provenance: write_task_json(
                    result, folder, provenance
                ),
            )
    print(format_table(results))
    md, csv = write_summary(results, out_dir)
    print(f"\nresults: {out_dir}/<model>/<task>.json, summary: {md} and {csv}")
    return results
