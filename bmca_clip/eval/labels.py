"""Short, readable names for the models of one evaluation: each is its summary column and its output folder.

    checkpoint=null               untrained, or pretrained-<name> with model.pretrained (a tag, or a file's stem)
    a run folder / its step file  <run folder>-step<N>      (runs/demo -> demo-step300)
    any other file                its stem                  (exported/model.pt -> model)
    with model.wise_ft_alpha      + -wise<alpha>            (demo-step300-wise0.5)

Two checkpoints of one evaluation whose names collide (runs/a/demo and runs/b/demo) each get `-` and the
first 8 hex digits of the sha256 of their absolute path: deterministic, so the same command finds its
folders, and the results stored there, again. The records keep what the name leaves out: the whole path
and the file's sha256 (report.py, provenance); `bmca_clip.export` picks a model by that sha256, never by
its folder's name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

_STEP = re.compile(r"^step_0*(\d+)\.pt$")  # checkpoint.py names step checkpoints step_NNNNNNNN.pt


def slug(text: str) -> str:
    """text with every run of characters unsafe in a folder name turned into one underscore."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def base_label(checkpoint: Path | None, pretrained: str | None) -> str:
    """The name of one checkpoint (None: the model as configured), before collisions are resolved."""
    if checkpoint is None:
        if not pretrained:
            return "untrained"
        name = Path(pretrained.rstrip("/").split(":")[-1])  # a tag, a file, hf-hub:org/repo, local-dir:...
        return "pretrained-" + slug(
            name.stem if name.suffix in (".pt", ".bin", ".safetensors") else name.name
        )
    step = _STEP.match(checkpoint.name)
    if step is None:
        return slug(checkpoint.stem)
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return f"{slug(run.resolve().name)}-step{step[1]}"


def model_labels(checkpoints: Sequence[Path | None], pretrained: str | None) -> list[str]:
    """One name per checkpoint, in order; the same file listed twice gets the same name."""
    keys = [None if c is None else str(Path(c).resolve()) for c in checkpoints]
    names = {key: base_label(None if key is None else Path(key), pretrained) for key in keys}
    owners: dict[str, set] = {}
    for key, name in names.items():
        owners.setdefault(name, set()).add(key)
    for key, name in names.items():
        if len(owners[name]) > 1 and key is not None:
            names[key] = f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    return [names[key] for key in keys]


def wise_label(label: str, alpha: float) -> str:
    """The name of a checkpoint blended with the base weights at alpha (WiSE-FT)."""
    return f"{label}-wise{alpha:g}"
