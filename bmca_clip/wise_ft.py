"""WiSE-FT weight-space ensembling: theta = (1 - alpha) * base + alpha * tuned (Wortsman et al., 2022).

BIOMEDICA's biggest gains came from merging the continually pretrained model with its start weights
(shared/BIOMEDICA.md). `blend` merges two state dicts, `wise_ft` writes the merge as a bmca-clip checkpoint
that eval.py and `model.pretrained=` load like any other, and `blended_models` yields one merge per alpha
for an evaluation sweep without rereading the checkpoints.

A merge is only meaningful with the weights the tuned run started from. Every training checkpoint records
their fingerprint (`start_weights`, model.py); `check_base` refuses another base unless told (`any_base=true`
here, `model.wise_ft_any_base=true` in eval.py), and merges a checkpoint without one with a warning.

    python -m bmca_clip.wise_ft base=openai tuned=runs/x/checkpoints/step_00010000.pt alpha=0.5 out=merged.pt
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from bmca_clip.checkpoint import atomic_torch_save, resolve_checkpoint
from bmca_clip.config import ConfigError, ModelConfig
from bmca_clip.errors import WeightMergeError
from bmca_clip.io import is_bmca_checkpoint, library_versions
from bmca_clip.model import build_model, weights_sha256

log = logging.getLogger(__name__)

USAGE = (
    "python -m bmca_clip.wise_ft base=<tag|file> tuned=<checkpoint> alpha=<0..1> out=<file.pt> [model=<arch>] "
    "[any_base=true]"
)

KEY_HELP = {
    "base": "the start weights: an open_clip pretrained tag (e.g. openai) or a .pt/.safetensors file",
    "tuned": "the continually pretrained weights: a bmca-clip checkpoint (step_N.pt) or an open_clip file",
    "alpha": "weight of tuned in [0, 1]: theta = (1 - alpha) * base + alpha * tuned",
    "out": "the merged checkpoint file to write (loads with eval.py checkpoint= or model.pretrained=)",
    "model": "open_clip architecture; default: the tuned checkpoint's model.name",
    "any_base": "true: merge even when base is not the weights the tuned run started from",
}


MergeError = WeightMergeError  # the old name, kept for code that imports it


def check_alpha(alpha: float) -> float:
    """`alpha` as a float in [0, 1]; outside it is extrapolation, a different method we do not offer."""
    try:
        alpha = float(alpha)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"alpha={alpha!r} is not a number; give a value in [0, 1]") from err
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"alpha={alpha} is outside [0, 1]: 0 gives the base model, 1 the tuned one; "
            "values outside would extrapolate, which WiSE-FT does not do"
        )
    return alpha


def blend(base: dict[str, Tensor], tuned: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """(1 - alpha) * base + alpha * tuned for every floating tensor, computed in float32 and cast to the
    tuned dtype; other tensors (integer buffers) must agree and are taken from `tuned`. The merge lands on
    the tuned tensors' device, whichever device base is on (eval.py's base lives on the GPU, a checkpoint
    is read to the CPU)."""
    alpha = check_alpha(alpha)
    _check_same_layout(base, tuned)
    merged = {}
    for key, t in tuned.items():
        b = base[key].to(t.device)  # a copy per tensor, not a second full state dict on either device
        if t.is_floating_point():
            # torch.lerp is exact at both ends (start at 0, end at 1), so alpha 0 / 1 return the inputs.
            merged[key] = torch.lerp(b.float(), t.float(), alpha).to(t.dtype)
        elif torch.equal(b, t):
            merged[key] = t
        else:
            raise WeightMergeError(
                f"non-floating tensor {key!r} differs between base and tuned and cannot be interpolated; "
                "the two checkpoints must come from the same architecture and configuration"
            )
    return merged


def check_base(
    base: dict[str, Tensor],
    tuned_ckpt: dict | None,
    base_name: str,
    tuned_name: str,
    override: str,
    any_base: bool,
) -> None:
    """Refuse (MergeError) a base whose weights are not the ones the tuned run started from, as recorded in
    the checkpoint's `start_weights`; with `any_base` only warn. `override` is the setting that says so."""
    start = (tuned_ckpt or {}).get("start_weights")
    if not start:
        log.warning(
            "%s records no start-weights fingerprint (written before bmca-clip recorded one, or not by "
            "bmca-clip): cannot check that %s is the start of its run; merging anyway",
            tuned_name,
            base_name,
        )
        return
    found = weights_sha256(base)
    if found == start["sha256"]:
        return
    message = (
        f"WiSE-FT base {base_name} (weights sha256 {found[:16]}) is not the start of {tuned_name}, which was "
        f"trained from weights sha256 {start['sha256'][:16]} (model {start.get('model')}, pretrained "
        f"{start.get('pretrained')}, seed {start.get('seed')}); merge with those weights, or set {override} "
        "to merge anyway"
    )
    if not any_base:
        raise WeightMergeError(message)
    log.warning("%s; %s given: merging anyway", message, override)


def _check_same_layout(base: dict[str, Tensor], tuned: dict[str, Tensor]) -> None:
    hint = "the two checkpoints must be the same architecture (same model.name and image size)"
    for key in base:
        if key not in tuned:
            raise WeightMergeError(f"key {key!r} is in base but not in tuned; {hint}")
    for key in tuned:
        if key not in base:
            raise WeightMergeError(f"key {key!r} is in tuned but not in base; {hint}")
        if base[key].shape != tuned[key].shape:
            raise WeightMergeError(
                f"key {key!r} has shape {tuple(base[key].shape)} in base and {tuple(tuned[key].shape)} "
                f"in tuned; {hint}"
            )


def read_bmca_checkpoint(spec: str) -> dict | None:
    """The checkpoint at `spec` if it is one of ours (io.is_bmca_checkpoint), else None. A sharded (fsdp)
    checkpoint folder is refused, naming bmca-dcp-convert (checkpoint.resolve_checkpoint)."""
    path = Path(spec)
    if path.suffix == ".dcp" and path.is_dir():
        resolve_checkpoint(spec)  # raises: convert it first
    if not path.is_file() or path.suffix == ".safetensors":
        return None
    try:
        # mmap: only the model tensors are paged in, not the optimizer state that doubles the file size.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        # Not ours (legacy pickle, TorchScript archive...): build_model reads it and explains any failure.
        return None
    return obj if is_bmca_checkpoint(obj) else None


def load_state(spec: str, model_name: str | ModelConfig) -> dict[str, Tensor]:
    """A state dict from our checkpoint, an open_clip .pt/.safetensors (`module.` prefix allowed), or an
    open_clip pretrained tag / hf-hub: id for the architecture `model_name` (a name or a ModelConfig,
    whose cache_dir and force_image_size are then used)."""
    ours = read_bmca_checkpoint(spec)
    if ours is not None:
        return ours["model"]
    cfg = model_name if isinstance(model_name, ModelConfig) else ModelConfig(name=model_name)
    # build_model loads files and tags exactly as eval does; offline, its error says what to download.
    return build_model(dataclasses.replace(cfg, pretrained=spec)).model.state_dict()


def blended_models(
    model_cfg: ModelConfig, base: str, tuned: str, alphas: float | Sequence[float], any_base: bool = False
) -> Iterator[tuple[float, dict[str, Tensor]]]:
    """(alpha, merged state dict) for each alpha, reading base and tuned once; for evaluation sweeps:
    `for alpha, state in blended_models(cfg.model, base, ckpt, [0.25, 0.5]): model.load_state_dict(state)`.
    A base that is not the tuned run's start is refused unless `any_base` (check_base)."""
    alphas = [check_alpha(a) for a in ([alphas] if isinstance(alphas, (int, float)) else alphas)]
    tuned_ckpt = read_bmca_checkpoint(tuned)
    base_state = load_state(base, model_cfg)
    tuned_state = tuned_ckpt["model"] if tuned_ckpt else load_state(tuned, model_cfg)
    check_base(base_state, tuned_ckpt, f"base={base}", f"tuned={tuned}", "any_base=True", any_base)
    for alpha in alphas:
        yield alpha, blend(base_state, tuned_state, alpha)


def wise_ft(
    base: str, tuned: str, alpha: float, out: Path, model: str | None = None, any_base: bool = False
) -> Path:
    """Merge `base` and `tuned` with weight `alpha` and write a bmca-clip checkpoint to `out`.

    `model` (the open_clip architecture) defaults to the tuned checkpoint's `config.model.name`. Step,
    samples seen, config and start_weights come from the tuned checkpoint when it is ours; `wise_ft`
    records the merge. A base that is not the tuned run's start is refused unless `any_base` (check_base).
    """
    alpha = check_alpha(alpha)
    tuned_ckpt = read_bmca_checkpoint(tuned)
    config = tuned_ckpt.get("config") if tuned_ckpt else None
    model = model or ((config or {}).get("model") or {}).get("name")
    if not model:
        raise ConfigError(
            f"tuned={tuned!r} is not a readable bmca-clip checkpoint with a config (an open_clip file, a tag, "
            "or an incomplete file?), so the architecture is unknown; pass model=<open_clip architecture>, "
            "e.g. model=ViT-L-14"
        )
    model_cfg = trained_model_config(config, name=model)
    tuned_state = tuned_ckpt["model"] if tuned_ckpt else load_state(tuned, model_cfg)
    base_state = load_state(base, model_cfg)
    check_base(base_state, tuned_ckpt, f"base={base}", f"tuned={tuned}", "any_base=true", any_base)
    merged = blend(base_state, tuned_state, alpha)
    state = {
        "model": merged,
        "step": int(tuned_ckpt["step"]) if tuned_ckpt else 0,
        "samples_seen": int(tuned_ckpt.get("samples_seen", 0)) if tuned_ckpt else 0,
        # The tuned run's config, model.pretrained included, says how the tuned half was trained; a foreign
        # tuned file gets a minimal one so export and eval still know the architecture.
        "config": config if config else {"model": {"name": model, "pretrained": None}},
        "versions": library_versions(),
        "wise_ft": {"base": str(base), "tuned": str(tuned), "alpha": alpha},
    }
    if tuned_ckpt and tuned_ckpt.get("start_weights"):
        state["start_weights"] = tuned_ckpt["start_weights"]  # the merge descends from the same start
    return atomic_torch_save(state, Path(out))


def trained_model_config(config: dict | None, name: str | None = None) -> ModelConfig:
    """The ModelConfig a training run built its model with (config = the checkpoint's `config`), minus
    the start weights, so a base or an export is built with the same size, logit bias and cache."""
    trained = dict((config or {}).get("model") or {})
    trained["name"] = name or trained.get("name")
    known = {f.name for f in dataclasses.fields(ModelConfig)} - {"pretrained"}
    return ModelConfig(**{k: v for k, v in trained.items() if k in known})


def _flag(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{key}={value!r} is not a boolean; give {key}=true or {key}=false")
    return value.lower() == "true"


def main(argv: Sequence[str] | None = None) -> None:
    from bmca_clip.cli import exit_on_user_error, parse_key_values  # the CLI alone: not for eval/run.py

    with exit_on_user_error():
        args = parse_key_values(
            sys.argv[1:] if argv is None else argv,
            ("base", "tuned", "alpha", "out"),
            ("model", "any_base"),
            USAGE,
            KEY_HELP,
        )
        alpha = check_alpha(args["alpha"])
        any_base = _flag("any_base", args.get("any_base", "false"))
        out = wise_ft(args["base"], args["tuned"], alpha, Path(args["out"]), args.get("model"), any_base)
    print(f"wrote {out} (WiSE-FT alpha={alpha}: base={args['base']}, tuned={args['tuned']})")


if __name__ == "__main__":
    main()
