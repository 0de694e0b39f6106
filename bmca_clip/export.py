"""Export a bmca-clip checkpoint in open_clip's hub format, with a model card, and optionally upload it.

The folder loads with `open_clip.create_model_and_transforms('local-dir:<folder>')`, and once pushed with
`'hf-hub:<org>/<name>'`; it holds what open_clip's own `save_for_hf` writes:
    open_clip_config.json        {"model_cfg": the architecture's config, "preprocess_cfg": mean, std, ...}
    open_clip_model.safetensors  the weights
    README.md                    model card: hub metadata, steps, start weights, results, training config
    tokenizer files              only for architectures with a Hugging Face tokenizer (e.g. PubMedBERT)

    python -m bmca_clip.export checkpoint=runs/x/checkpoints/step_00010000.pt out=export/x \
        [results=runs/eval/demo] [push_to_hub=org/name] [private=true] [license=mit]

results= is an eval output folder (the model whose task results record this checkpoint's SHA-256 is
taken) or one model's folder in it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import open_clip
import safetensors.torch
from huggingface_hub import HfApi, ModelCardData
from omegaconf import OmegaConf
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
from open_clip.factory import parse_model_name
from open_clip.push_to_hf_hub import save_config_for_hf
from open_clip.transform import merge_preprocess_dict

from bmca_clip.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from bmca_clip.cli import exit_on_user_error, parse_key_values
from bmca_clip.config import ConfigError
from bmca_clip.eval.harness import TaskResult
from bmca_clip.eval.report import format_table, sha256_file
from bmca_clip.model import ModelLoadError, build_model
from bmca_clip.redact import redact_config
from bmca_clip.wise_ft import trained_model_config

log = logging.getLogger(__name__)

USAGE = (
    "python -m bmca_clip.export checkpoint=<step_N.pt> out=<folder> [results=<eval folder>] "
    "[push_to_hub=<org/name>] [private=true|false] [license=<spdx id>]"
)
KEY_HELP = {
    "checkpoint": "a training checkpoint (step_N.pt), or a run folder: its newest checkpoint",
    "out": "folder to write the open_clip hub-format model and its model card to",
    "results": "eval.py's output folder (or one model's folder in it): a results table in the model card",
    "push_to_hub": "upload the folder to this hub model repo (org/name); needs HF_TOKEN or `hf auth login`",
    "private": "create the hub repo private (true, the default) or public (false)",
    "license": "SPDX licence id for the model card, e.g. mit (default: other)",
}
TAGS = ["clip", "biomedical", "zero-shot-image-classification"]


def export(
    checkpoint: str,
    out: Path,
    results_dir: Path | None = None,
    push_to_hub: str | None = None,
    private: bool = True,
    license: str = "other",
) -> Path:
    """Write `checkpoint` to the folder `out` in open_clip's hub format with a model card (a results table
    when `results_dir` holds eval JSON files); upload the folder to the model repo `push_to_hub` if given."""
    ckpt_file = resolve_checkpoint(checkpoint)  # a file, or the newest of a run folder
    ckpt = load_checkpoint(ckpt_file)
    model_section = (ckpt.get("config") or {}).get("model") or {}
    if not model_section.get("name"):
        raise CheckpointError(
            f"{checkpoint} has no config.model.name, so its architecture is unknown; export a checkpoint "
            "written by train.py or bmca_clip.wise_ft"
        )
    results = load_results(results_folder(Path(results_dir), ckpt_file)) if results_dir else []
    model_cfg, model, tokenizer = _build_trained_model(ckpt, checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # open_clip's save_for_hf would do these three steps, but it calls tokenizer.save_pretrained, which
    # the default CLIP tokenizer lacks: open_clip only needs that for Hugging Face tokenizers.
    save_config_for_hf(model, out / HF_CONFIG_NAME, model_config=model_cfg)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(tensors, out / HF_SAFE_WEIGHTS_NAME, metadata={"format": "pt"})
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(out)
    card = model_card(ckpt, title=push_to_hub or out.name, results=results, license=license)
    (out / "README.md").write_text(card)
    if push_to_hub:
        push_folder(out, push_to_hub, private=private)
    return out


def _build_trained_model(ckpt: dict, checkpoint: str):
    """(open_clip model config, model with the checkpoint's weights, tokenizer), built as training did."""
    section = ckpt["config"]["model"]
    cfg = trained_model_config(ckpt["config"])
    bundle = build_model(cfg)
    try:
        bundle.model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise ModelLoadError(
            f"the weights in {checkpoint} do not fit its config.model (name={cfg.name!r}): {err}; was the "
            "checkpoint edited, or written by another version?"
        ) from err
    schema, _ = parse_model_name(cfg.name)
    model_cfg = open_clip.get_model_config(cfg.name if schema else cfg.name.replace("/", "-"))
    # What build_model passed to open_clip on top of the architecture's config, so local-dir: builds the same.
    if cfg.force_image_size is not None:
        model_cfg["vision_cfg"]["image_size"] = cfg.force_image_size
    if cfg.init_logit_bias is not None:
        model_cfg["init_logit_bias"] = cfg.init_logit_bias
    # Training built the model from its start weights, so a pretrained tag's mean/std/interpolation were
    # the transforms it learnt under; a random-init build here only has open_clip's defaults.
    tag_cfg = open_clip.get_pretrained_cfg(cfg.name.replace("/", "-"), section.get("pretrained") or "")
    if tag_cfg:
        preprocess = merge_preprocess_dict(bundle.model.visual.preprocess_cfg, tag_cfg)
        open_clip.set_model_preprocess_cfg(bundle.model, preprocess)
    return model_cfg, bundle.model.eval(), bundle.tokenizer


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
    """What changed at each resume (bmca_clip/resume.py): the config below is the one in force at the end,
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


def push_folder(folder: Path, repo_id: str, private: bool = True) -> str:
    """Create the model repo `repo_id` if needed and upload `folder`; returns the commit URL."""
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message="Upload bmca-clip export"
        )
    except Exception as err:
        # The hub client raises its HTTP backend's errors as well as its own; they share no narrower base.
        raise ConfigError(
            f"push_to_hub={repo_id}: upload failed ({type(err).__name__}: {err}); check the repo id, the "
            "network, and that `hf auth login` or HF_TOKEN gives write access"
        ) from err
    return commit.commit_url


def _flag(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: true, false")
    return value.lower() == "true"


def main(argv: Sequence[str] | None = None) -> None:
    with exit_on_user_error():
        args = parse_key_values(
            sys.argv[1:] if argv is None else argv,
            ("checkpoint", "out"),
            ("results", "push_to_hub", "private", "license"),
            USAGE,
            KEY_HELP,
        )
        out = export(
            args["checkpoint"],
            Path(args["out"]),
            results_dir=Path(args["results"]) if args.get("results") else None,
            push_to_hub=args.get("push_to_hub") or None,
            private=_flag("private", args.get("private", "true")),
            license=args.get("license") or "other",
        )
    files = ", ".join(sorted(p.name for p in out.iterdir() if p.is_file()))
    print(f"wrote {out}: {files}")
    if args.get("push_to_hub"):
        print(f"pushed to https://huggingface.co/{args['push_to_hub']}")


if __name__ == "__main__":
    main()
