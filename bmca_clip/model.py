"""Model factory: open_clip models by name, pretrained weights from tags, hub ids or local files.

open_clip does the building, the downloading and the state-dict massaging (it strips the `module.` prefix
of DDP-saved files such as BMC_CLIP_CF.pt and accepts safetensors). This module adds our small configs,
our own checkpoints as a weight source, and error messages that say what to download and where to put it.
`start_weights` is the fingerprint of the weights a run starts from, which every checkpoint records so a
WiSE-FT merge can check its base (wise_ft.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
from open_clip.factory import HF_HUB_PREFIX, parse_model_name
from open_clip.pretrained import download_pretrained_from_hf

from bmca_clip.config import ModelConfig
from bmca_clip.errors import ModelLoadError
from bmca_clip.hf_tower import is_hf_text, lock_hf_text, require_hf_text_tower
from bmca_clip.io import is_bmca_checkpoint

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class ClipBundle:
    """A model with the transforms and tokenizer that belong to it."""

    model: torch.nn.Module
    preprocess_train: Any
    preprocess_eval: Any
    tokenizer: Any


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> ClipBundle:
    """Create the model named by `cfg` with its train/eval transforms and tokenizer."""
    name, pretrained = cfg.name, cfg.pretrained
    schema, _ = parse_model_name(name)
    if schema is None and name.replace("/", "-") not in open_clip.list_models():
        raise ModelLoadError(
            f"model.name={name!r} is not an open_clip architecture. Known names include: "
            f"{', '.join(open_clip.list_models()[:12])}, ... (see open_clip.list_models()), "
            "or use hf-hub:<org>/<repo> or local-dir:<folder>."
        )
    # A local file (ours, open_clip's, safetensors, DDP-prefixed) is loaded after building: open_clip
    # cannot read our trainer checkpoints, and load_model_weights handles every form with one message.
    weights_file = pretrained if pretrained and Path(pretrained).is_file() else None
    require_hf_text_tower(name)
    preprocess: dict = {}
    if pretrained and pretrained.startswith(HF_HUB_PREFIX):  # open_clip reads hf-hub: only as a name
        weights_file, preprocess = hub_weights(pretrained[len(HF_HUB_PREFIX) :], cfg.cache_dir)
    if pretrained and not weights_file and schema is None:
        _check_pretrained_available(name, pretrained)
    try:
        model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
            name,
            pretrained=None if weights_file else pretrained,
            device=device,
            cache_dir=cfg.cache_dir,
            force_image_size=cfg.force_image_size,
            output_dict=True,
            **({"init_logit_bias": cfg.init_logit_bias} if cfg.init_logit_bias is not None else {}),
            **preprocess,
        )
    except (RuntimeError, OSError, ValueError) as err:
        raise ModelLoadError(_explain_load_failure(name, pretrained, err)) from err
    if weights_file:
        load_model_weights(model, weights_file, name)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    freeze(model, cfg)
    return ClipBundle(model, preprocess_train, preprocess_eval, open_clip.get_tokenizer(name))


def hub_weights(hub_id: str, cache_dir: str | None = None) -> tuple[str, dict]:
    """The weights file of the open_clip model repo `hub_id` on the Hugging Face hub (from its cache when
    there), and its preprocessing as create_model_and_transforms keywords (image_mean, image_std, ...):
    model.pretrained=hf-hub:<org>/<name> starts model.name's architecture from that repo's weights."""
    try:
        with open(download_pretrained_from_hf(hub_id, filename=HF_CONFIG_NAME, cache_dir=cache_dir)) as f:
            hub_preprocess = json.load(f).get("preprocess_cfg") or {}
        weights = download_pretrained_from_hf(hub_id, cache_dir=cache_dir)  # .safetensors first, then .bin
    except Exception as err:  # huggingface_hub raises its own and its HTTP backend's errors
        cache = f"model.cache_dir={cache_dir}" if cache_dir else "HF_HOME"
        raise ModelLoadError(
            f"model.pretrained=hf-hub:{hub_id}: could not get {HF_CONFIG_NAME} and the weights from the "
            f"Hugging Face hub or its cache ({type(err).__name__}); on a connected machine run "
            f"`hf download {hub_id}` and copy the cache to this one ({cache}), or download "
            f"{HF_SAFE_WEIGHTS_NAME} and pass model.pretrained=/path/to/{HF_SAFE_WEIGHTS_NAME}"
        ) from err
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation"}
    keys["resize_mode"] = "image_resize_mode"
    return weights, {arg: hub_preprocess[key] for key, arg in keys.items() if key in hub_preprocess}


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of every state-dict entry's name, dtype, shape and bytes, in name order (as eval/cache.py's
    state_dict_sha256), with floating tensors as float32: a run's start is hashed before any bf16 cast,
    and a base read from an fp16 file into an fp32 model hashes the same."""
    digest = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        tensor = tensor.detach()
        tensor = (tensor.float() if tensor.is_floating_point() else tensor).cpu().contiguous()  # a sync
        digest.update(f"\0{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def start_weights(model: torch.nn.Module, cfg: ModelConfig, seed: int) -> dict:
    """What a checkpoint records about the weights its run started from: their sha256 (weights_sha256)
    and where they came from (model.name, model.pretrained, train.seed)."""
    return {
        "sha256": weights_sha256(model.state_dict()),
        "model": cfg.name,
        "pretrained": cfg.pretrained,
        "seed": seed,
    }


def freeze(model: torch.nn.Module, cfg: ModelConfig) -> list[str]:
    """Freeze what `cfg` asks for; returns the names of the frozen parameters (logged, and tested)."""
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups)
    if cfg.lock_text and is_hf_text(getattr(model, "text", None)):  # BiomedCLIP's: hf_tower.py
        lock_hf_text(model.text, cfg.lock_text_unlocked_layers)
    elif cfg.lock_text:
        # open_clip asserts on freeze_layer_norm=False for native text towers (its LayerNorms are frozen
        # with the rest), so only the supported form is ever passed.
        model.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers, freeze_layer_norm=True)
    patterns = [re.compile(p) for p in cfg.freeze]
    for name, param in model.named_parameters():
        if any(p.search(name) for p in patterns):
            param.requires_grad = False
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        total = sum(p.numel() for p in model.parameters())
        n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        log.info("frozen: %d tensors, %.1f%% of %d parameters", len(frozen), 100 * n_frozen / total, total)
    return frozen


def _check_pretrained_available(name: str, pretrained: str) -> None:
    if Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors", ".npz"):
        raise ModelLoadError(f"model.pretrained={pretrained!r}: no such file. Check the path.")
    tags = open_clip.list_pretrained_tags_by_model(name.replace("/", "-"))
    if pretrained not in tags:
        raise ModelLoadError(
            f"model.pretrained={pretrained!r} is neither a file nor a known tag for {name}. "
            f"Known tags: {', '.join(tags) or 'none'}."
        )


def _explain_load_failure(name: str, pretrained: str | None, err: Exception) -> str:
    what = f"{name} with weights {pretrained!r}" if pretrained else name
    hint = (
        "If this machine is offline, download the weights elsewhere (e.g. `hf download <repo> <file>` or "
        "open_clip.create_model_and_transforms on a connected machine), copy the file here and pass "
        "model.pretrained=/path/to/file.safetensors (or .pt); set model.cache_dir to reuse a hub cache."
    )
    return f"could not load {what}: {err}. {hint}"


def load_model_weights(model: torch.nn.Module, path: str | Path, model_name: str = "this model") -> None:
    """Load weights from our checkpoint, an open_clip .pt/.safetensors, or a DDP `module.`-prefixed file;
    weights of another architecture are a ModelLoadError that summarizes the difference (model_name: the
    model.name the model was built as, for the message)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path}: no such file")
    try:
        obj = (
            torch.load(path, map_location="cpu", weights_only=True) if path.suffix != ".safetensors" else None
        )
    except Exception as err:
        raise ModelLoadError(f"checkpoint {path} could not be read ({err}); is it complete?") from err
    if is_bmca_checkpoint(obj):
        load_checked(model, obj["model"], f"model.pretrained={path}", model_name, trained_name(obj))
        return
    try:
        open_clip.load_checkpoint(model, str(path))
    except Exception as err:
        try:  # the file as open_clip reads it (prefixes stripped), to say what differs
            state = open_clip.factory.load_state_dict(str(path))
        except Exception:
            raise ModelLoadError(f"weights in {path} do not fit {model_name}: {err}") from err
        raise ModelLoadError(mismatch_message(model, state, f"model.pretrained={path}", model_name)) from err


def trained_name(checkpoint: Mapping | None) -> str | None:
    """The model.name a checkpoint of ours was trained as (its saved config), if it says."""
    config = (checkpoint or {}).get("config") or {}
    return (config.get("model") or {}).get("name")


def load_checked(
    model: torch.nn.Module,
    state: Mapping,
    source: str,
    model_name: str,
    trained_as: str | Callable[[], str | None] | None = None,
) -> None:
    """model.load_state_dict(state); weights of another architecture are a ModelLoadError naming source,
    model_name and the architecture the weights were trained as (trained_as: a name, or a function asked
    only on a mismatch, so a large checkpoint is not read again for every load)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        name = trained_as() if callable(trained_as) else trained_as
        raise ModelLoadError(mismatch_message(model, state, source, model_name, name)) from err


def mismatch_message(
    model: torch.nn.Module, state: Mapping, source: str, model_name: str, trained_as: str | None = None
) -> str:
    """One line on why state does not fit model: counts and one example of each kind, not every key
    (torch's own message lists hundreds)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
    parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (e.g. {k}: {list(state[k].shape)} in the file, "
            f"{list(own[k].shape)} in the model)"
        )
    fix = (
        f"pass model={trained_as}, the architecture it was trained as"
        if trained_as and trained_as != model_name
        else "pass the model= these weights were trained as"
    )
    return f"{source} does not fit model.name={model_name}: {'; '.join(parts) or 'the tensors differ'}; {fix}"
