"""Short, readable names for the models of one evaluation: each is its summary column and its output folder.

    checkpoint=null               untrained, or pretrained-<name> with model.pretrained (a tag, or a file's stem)
    a run folder / its step file  <run folder>-step<N>      (runs/demo -> demo-step300)
    any other file                its stem                  (exported/model.pt -> model)
    with model.wise_ft_alpha      + -wise<alpha>            (demo-step300-wise0.5)

A name stands for a model key: the checkpoint's absolute path, or, for checkpoint=null, model.name and
model.pretrained. Two keys of one evaluation whose names collide (runs/a/demo and runs/b/demo) each get
`-` and the first 8 hex digits of the sha256 of their key, and so does a key whose folder in output_dir
already holds another key's results (an earlier eval of another architecture, or of a run of the same
name elsewhere), which would otherwise be overwritten. All of it is deterministic, so the same command
finds its folders, and the results stored there, again. The records keep what the name leaves out: the
whole path and the file's sha256 (report.py, provenance); `bmca_clip.export` picks a model by that
sha256, never by its folder's name.
"""

from __future__ import annotations

import hashlib
import json
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


def model_key(model_name: str, checkpoint: str | Path | None, pretrained: str | None) -> str:
    """What a name stands for: a checkpoint's absolute path; for none, the architecture and its weights."""
    if checkpoint is not None:
        return str(Path(checkpoint).resolve())
    return f"{model_name}:{pretrained or 'untrained'}"


def _stored_key(out_dir: Path, name: str) -> str | None:
    """The model key of the results already in out_dir/<name> (or its -wise<alpha> folders), if any."""
    for folder in [out_dir / name, *sorted(out_dir.glob(f"{name}-wise*"))]:
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            try:
                prov = json.loads(path.read_text())["provenance"]
                return model_key(prov["model"], prov.get("checkpoint"), prov.get("pretrained"))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable or foreign: the next record may say
    return None


def model_labels(
    checkpoints: Sequence[Path | None],
    model_name: str,
    pretrained: str | None,
    out_dir: str | Path | None = None,
) -> list[str]:
    """One name per checkpoint, in order (module docstring); the same file listed twice gets one name.
    With out_dir, a name whose folder holds another model's results is made unique too."""
    keys = [model_key(model_name, c, pretrained) for c in checkpoints]
    names = {key: base_label(c and Path(key), pretrained) for key, c in zip(keys, checkpoints, strict=True)}
    owners: dict[str, set] = {}
    for key, name in names.items():
        owners.setdefault(name, set()).add(key)
    for key, name in names.items():
        stored = None if out_dir is None else _stored_key(Path(out_dir), name)
        if len(owners[name]) > 1 or stored not in (None, key):
            names[key] = f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    return [names[key] for key in keys]


def wise_label(label: str, alpha: float) -> str:
    """The name of a checkpoint blended with the base weights at alpha (WiSE-FT)."""
    return f"{label}-wise{alpha:g}"
