"""`run(cfg)` behind eval.py: evaluate one suite for each requested checkpoint and print one comparison."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from bmca_clip.checkpoint import CheckpointError, list_checkpoints
from bmca_clip.config import EvaluateConfig
from bmca_clip.dist import _pick_device
from bmca_clip.eval.harness import TaskResult, evaluate_suite
from bmca_clip.eval.report import format_table, make_provenance, write_summary, write_task_json
from bmca_clip.eval.tasks import load_suite
from bmca_clip.model import build_model, load_model_weights

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint file, or the newest step checkpoint of a run folder (or of its checkpoints/ folder)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = list_checkpoints(p / "checkpoints") or list_checkpoints(p)
        if found:
            return found[-1]
        raise CheckpointError(f"checkpoint={path}: the folder holds no step_*.pt checkpoints")
    raise CheckpointError(f"checkpoint={path}: no such file or folder")


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


def evaluate_one(
    cfg: EvaluateConfig, checkpoint: Path | None, device: torch.device, out_dir: Path
) -> list[TaskResult]:
    # The same seed as training, so an untrained model here is the very initialisation training started from.
    torch.manual_seed(cfg.seed)
    bundle = build_model(cfg.model, device)
    if checkpoint is not None:
        load_model_weights(bundle.model, checkpoint)
    provenance = make_provenance(
        cfg.model.name, device, pretrained=cfg.model.pretrained, checkpoint=checkpoint
    )
    suite = load_suite(cfg.suite["name"])
    return evaluate_suite(
        suite,
        bundle.model,
        bundle.preprocess_eval,
        bundle.tokenizer,
        device,
        cfg.data_root,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        on_result=lambda result: write_task_json(result, out_dir, provenance),
    )


def run(cfg: EvaluateConfig) -> dict[str, list[TaskResult]]:
    device = _pick_device(cfg.device, 0)
    out_dir = Path(cfg.output_dir)
    checkpoints = [None if c is None else resolve_checkpoint(c) for c in cfg.checkpoints]
    results: dict[str, list[TaskResult]] = {}
    for checkpoint in checkpoints:
        label = _label(cfg, checkpoint)
        log.info("evaluating %s on suite %s", label, cfg.suite["name"])
        results[label] = evaluate_one(cfg, checkpoint, device, out_dir / _slug(label))
    print(format_table(results))
    md, csv = write_summary(results, out_dir)
    print(f"\nresults: {out_dir}/<model>/<task>.json, summary: {md} and {csv}")
    return results
