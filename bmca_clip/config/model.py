"""The `model` group (conf/model/<name>.yaml): what train.py builds and eval.py scores.

eval.py's model adds the WiSE-FT keys (config/evaluate.py EvalModelConfig); train.py's schema does not
hold them, so a training command line that sets them is refused instead of silently ignoring them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bmca_clip.config.checks import check, finite
from bmca_clip.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "bmca-tiny"  # open_clip architecture (ViT-L-14, ...), or an hf-hub:/local-dir: id
    pretrained: str | None = None  # open_clip tag, hf-hub:<org>/<name>, a .pt or .safetensors; null: random
    # where downloaded weights (model.pretrained from the hub) are kept; null = huggingface_hub's default
    # (HF_HOME); not data.cache_dir (shard manifests) nor eval.py's cache_dir (embeddings)
    cache_dir: str | None = None
    grad_checkpointing: bool = False  # recompute activations in backward to save memory
    force_image_size: int | None = None  # override the architecture's input resolution (pixels, >= 1)
    init_logit_bias: float | None = None  # add a learnable logit bias (SigLIP uses -10); null = none
    lock_image: bool = False  # freeze the image tower (LiT) ...
    lock_image_unlocked_groups: int = 0  # ... except its last N groups (projection + ln_post, blocks, ...)
    lock_text: bool = False  # freeze the text tower ...
    lock_text_unlocked_layers: int = 0  # ... except its last N groups (projection, last block + ln, ...)
    freeze: list[str] = field(default_factory=list)  # regexes: parameters whose name matches any are frozen

    def __post_init__(self):
        check(bool(self.name), "model.name", self.name, "an open_clip model name such as ViT-L-14")
        bias = self.init_logit_bias
        check(finite(bias), "model.init_logit_bias", bias, "a finite float (SigLIP uses -10) or null")
        size = self.force_image_size
        check(size is None or size >= 1, "model.force_image_size", size, "null or a size in pixels >= 1")
        for pattern in self.freeze:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(
                    f"model.freeze: {pattern!r} is not a valid regular expression ({err})"
                ) from None
