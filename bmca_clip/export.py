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

import sys
from collections.abc import Sequence
from pathlib import Path

import open_clip
import safetensors.torch
from huggingface_hub import HfApi
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
from open_clip.factory import parse_model_name
from open_clip.push_to_hf_hub import save_config_for_hf
from open_clip.transform import merge_preprocess_dict

from bmca_clip.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from bmca_clip.cli import exit_on_user_error, parse_key_values
from bmca_clip.config import ConfigError
from bmca_clip.model import ModelLoadError, build_model
from bmca_clip.model_card import load_results, model_card, results_folder
from bmca_clip.wise_ft import trained_model_config

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
