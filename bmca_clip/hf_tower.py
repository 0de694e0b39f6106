"""Models whose text tower is a Hugging Face transformer (open_clip's HFTextEncoder: BiomedCLIP's PubMedBERT).

What differs from a native open_clip tower, in one place: the tower needs transformers (the `biomedclip`
extra); `lock_text` is done here, because open_clip's HFTextEncoder.lock fails for BERT with unlocked layers
(its arch table has no layer names for it); and DDP needs find_unused_parameters only when the transformer
holds a pooler that the open_clip pooler does not use.

Freezing semantics of the HF tower (README "Continual pretraining from BiomedCLIP"), open_clip's:
- lock_text=true: the transformer (embeddings, every layer, every LayerNorm) is frozen; the projection
  `text.proj` stays trainable (a native tower freezes its projection too): add model.freeze=['^text\\.proj']
  to freeze it as well.
- lock_text_unlocked_layers=N: the last N transformer layers train as well (N counts encoder layers;
  N = layers + 1 unfreezes the embeddings too). For a native tower N counts groups, the last being
  ln_final + the projection, so N=1 there trains only the projection.
- lock_image on BiomedCLIP's timm ViT (open_clip's TimmModel.lock): the trunk is frozen, the projection
  `visual.head.proj` stays trainable; lock_image_unlocked_groups=N trains timm's last N groups (N=1: the
  last block and the final norm). A native ViT freezes its projection too, and N=1 unlocks only it.
"""

from __future__ import annotations

import open_clip
import torch

from bmca_clip.config import ConfigError
from bmca_clip.extras import installed, require


def hf_text_tower(name: str) -> str | None:
    """The Hugging Face model a text tower is built from (text_cfg.hf_model_name: BiomedCLIP's PubMedBERT),
    or None for a native tower; for an hf-hub: id this reads the repo's open_clip_config.json (open_clip
    reads it next anyway); a config that cannot be read is left for open_clip to explain."""
    try:
        model_cfg = open_clip.get_model_config(name if ":" in name else name.replace("/", "-"))
    except Exception:  # offline and not cached, a missing local-dir: open_clip's own error follows
        return None
    return ((model_cfg or {}).get("text_cfg") or {}).get("hf_model_name")


def require_hf_text_tower(name: str) -> None:
    """A model whose text tower is a Hugging Face model needs transformers (the `biomedclip` extra): one
    line naming it, instead of open_clip's RuntimeError deep inside model construction."""
    if installed("transformers"):
        return
    tower = hf_text_tower(name)
    if tower:
        require("transformers", f"model.name={name} (text tower {tower})", "transformers", "biomedclip")


def is_hf_text(text: torch.nn.Module) -> bool:
    return type(text).__name__ == "HFTextEncoder" and hasattr(text, "transformer")


def lock_hf_text(text: torch.nn.Module, unlocked_layers: int) -> None:
    """Freeze the HF transformer of `text` but its last `unlocked_layers` layers (module docstring)."""
    transformer = text.transformer
    encoder = getattr(transformer, "encoder", transformer)
    layers = (
        getattr(encoder, "layer", None) or getattr(encoder, "block", None) or getattr(encoder, "layers", None)
    )
    embeddings = getattr(transformer, "embeddings", None) or getattr(transformer, "embed_tokens", None)
    if unlocked_layers and (layers is None or embeddings is None):
        raise ConfigError(
            f"model.lock_text_unlocked_layers={unlocked_layers}: the layers of the text tower's "
            f"{type(transformer).__name__} are not found; use lock_text_unlocked_layers=0 or model.freeze regexes"
        )
    frozen = [transformer] if not unlocked_layers else [embeddings, *layers][:-unlocked_layers]
    for module in frozen:
        for param in module.parameters():
            param.requires_grad = False


def needs_find_unused_parameters(model: torch.nn.Module) -> bool:
    """Whether DDP must look for parameters without a gradient: a HF text tower whose transformer has a
    trainable pooler (BERT's, built for the "cls_pooler") that its open_clip pooler does not read. BiomedCLIP
    ("cls_last_hidden_state_pooler", built without BERT's pooler) uses every parameter."""
    text = getattr(model, "text", None)
    if text is None or not is_hf_text(text):
        return False
    pooler = getattr(text.transformer, "pooler", None)
    trainable = pooler is not None and any(p.requires_grad for p in pooler.parameters())
    reads_it = type(text.pooler).__name__ == "ClsPooler" and getattr(text.pooler, "use_pooler_output", False)
    return trainable and not reads_it
