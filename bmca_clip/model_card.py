"""The model card an export writes (README.md on the hub): metadata front matter, provenance, a results table
and the training config. The results are eval.py's task JSONs for this checkpoint, found in an eval output
folder by the checkpoint's SHA-256 recorded in them. bmca_clip/export.py writes the weights beside it."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import open_clip
from huggingface_hub import ModelCardData
from omegaconf import OmegaConf
from open_clip.factory import parse_model_name

from bmca_clip.config import ConfigError
from bmca_clip.eval.harness import TaskResult
from bmca_clip.eval.report import format_table, sha256_file
from bmca_clip.redact import redact_config

log = logging.getLogger(__name__)

TAGS = ["clip", "biomedical", "zero-shot-image-classification"]


def results_folder(results_dir: Path, checkpoint_file: Path) -> Path:
    """The folder of this checkpoint's task results: results_dir itself when it holds task JSONs, else
    the per-model subfolder eval.py wrote (<output_dir>/<model label>/<task>.json) whose records hold the
    checkpoint's SHA-256, else its only subfolder. Matching by hash, not by folder name, survives any
    naming of the labels and an eval of several checkpoints into one output_dir."""
    if not results_dir.is_dir() or _task_records(results_dir):
        return results_dir  # load_results names a missing folder
    subfolders = sorted(p for p in results_dir.iterdir() if p.is_dir() and _task_records(p))
    if not subfolders:
        return results_dir  # load_results says it holds no task result
    sha = sha256_file(checkpoint_file)
    matching = [p for p in subfolders if any(_checkpoint_sha(r) == sha for r in _task_records(p))]
    if len(matching) == 1 or (not matching and len(subfolders) == 1):
        return (matching or subfolders)[0]
    names = ", ".join(p.name for p in subfolders) or "none"
    which = "several of them" if len(matching) > 1 else "none of them"
    raise ConfigError(
        f"results={results_dir}: {which} scored {checkpoint_file} (sha256 {sha[:12]}); per-model "
        f"folders with task results: {names}; pass results=<one of them>"
    )


def _task_records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and {"task", "main_metric", "metrics", "status"} <= record.keys():
            records.append(record)
    return records


def _checkpoint_sha(record: dict) -> str | None:
    model = (record.get("config") or {}).get("model") or {}
    return model.get("checkpoint_sha256") or (record.get("provenance") or {}).get("checkpoint_sha256")


def load_results(results_dir: Path) -> list[TaskResult]:
    """The task results among `results_dir/*.json` (schema in bmca_clip/eval/report.py), by file name."""
    if not results_dir.is_dir():
        raise ConfigError(f"results={results_dir}: no such folder; pass an eval output folder <out>/<model>")
    results = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"results={results_dir}: {path.name} is not valid JSON ({err}); remove it"
            ) from err
        if not isinstance(record, dict) or not {"task", "main_metric", "metrics", "status"} <= record.keys():
            log.info("%s is not a task result; left out of the model card", path)
            continue
        fields = {f.name for f in dataclasses.fields(TaskResult)}
        values = {"type": "", "domain": "", **{k: v for k, v in record.items() if k in fields}}
        results.append(TaskResult(**values))
    if not results:
        raise ConfigError(
            f"results={results_dir} holds no task result JSON (*.json with task, main_metric, metrics, "
            "status); pass the folder eval.py wrote for this model"
        )
    return results


def _base_model(model_section: dict) -> str | None:
    """The hub id of the start weights, for the card's `base_model` (the hub's model tree), if known."""
    name, pretrained = model_section.get("name") or "", model_section.get("pretrained") or ""
    schema, identifier = parse_model_name(name)
    if schema == "hf-hub":
        return identifier
    hub_id = open_clip.get_pretrained_cfg(name.replace("/", "-"), pretrained).get("hf_hub", "")
    return hub_id.strip("/") or None


def model_card(ckpt: dict, title: str, results: Sequence[TaskResult] = (), license: str = "other") -> str:
    """README.md for the hub: metadata front matter, provenance, results table and training config.
    Published by push_to_hub, so credentials in URLs are redacted (checkpoints before redaction hold them)."""
    ckpt = {**ckpt, **redact_config({k: ckpt.get(k) for k in ("config", "config_history", "wise_ft")})}
    config = ckpt.get("config") or {}
    section = config.get("model") or {}
    sources = ((config.get("data") or {}).get("sources") or {}).values()
    datasets = sorted({s["repo_id"] for s in sources if isinstance(s, dict) and s.get("repo_id")})
    meta = ModelCardData(
        library_name="open_clip",
        license=license,
        tags=TAGS,
        pipeline_tag="zero-shot-image-classification",
        base_model=_base_model(section),
        datasets=datasets or None,
    )
    lines = [
        f"---\n{meta.to_yaml()}\n---",
        f"# {title}",
        "",
        "A CLIP model continually pretrained on BIOMEDICA with bmca-clip.",
        "",
        f"- Architecture: `{section.get('name')}`",
        f"- Start weights: `{section.get('pretrained') or 'none (random init)'}`",
        f"- Steps: {ckpt.get('step', 0)}",
        f"- Samples seen: {ckpt.get('samples_seen', 0)}",
    ]
    if ckpt.get("wise_ft"):
        merge = ckpt["wise_ft"]
        lines.append(
            f"- WiSE-FT merge: (1 - {merge['alpha']}) * `{merge['base']}` + {merge['alpha']} * `{merge['tuned']}`"
        )
    load_id = f"hf-hub:{title}" if "/" in title else "local-dir:/path/to/this/folder"
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import open_clip",
        f'model, _, preprocess = open_clip.create_model_and_transforms("{load_id}")',
        f'tokenizer = open_clip.get_tokenizer("{load_id}")',
        "```",
    ]
    if results:
        lines += ["", "## Zero-shot results", "", "Main metric per task, in percent.", ""]
        lines.append(format_table({"this model": list(results)}))
    lines += _history_lines(ckpt.get("config_history") or [])
    lines += ["", "## Training config", "", "```yaml", OmegaConf.to_yaml(config).rstrip(), "```", ""]
    return "\n".join(lines)


def _history_lines(history: Sequence[dict]) -> list[str]:
    """What changed at each resume (bmca_clip/train/resume.py): the config below is the one in force at the end,
    so a run resumed with another lr or more steps says which steps ran with which values."""
    restarts = [entry for entry in history[1:] if entry.get("changed") or entry.get("resume_data") == "reset"]
    if not restarts:
        return []
    lines = ["", "## Resumed with changed settings", ""]
    for entry in restarts:
        changes = ", ".join(f"`{k}` {old} -> {new}" for k, (old, new) in (entry.get("changed") or {}).items())
        fresh = "; fresh data stream (resume_data=reset)" if entry.get("resume_data") == "reset" else ""
        lines.append(f"- from step {entry.get('step')}: {changes or 'no setting changed'}{fresh}")
    return lines
