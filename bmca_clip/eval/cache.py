"""On-disk cache of what the encoders compute, so that evaluating the same weights on the same data again
(another output_dir, a crashed run, a new metric) neither decodes an image nor runs the image tower.

Layout: `<cache_dir>/embeddings/<kind>/<key>.pt`, one file per entry:
    images       (features [n, d], loader targets [n]) of a dataset; key parts: model key, autocast
                 dtype, preprocessing description, dataset fingerprint
    classifiers  (zero-shot class weights [d, K],); key parts: model key, dtype, class names, templates
    texts        (text features [n, d],); key parts: model key, dtype, sha256 of the texts
`key` is the sha256 of the parts as canonical JSON; the file stores the parts too and they are compared
on load, so a stale or foreign file is recomputed, never used. Tensors are fp32, as computed. Nothing is
evicted: delete the folder to reclaim the space (ViT-L-14 features of 250k images take ~0.8 GB).

The model key is sha256 over the architecture name and every state-dict tensor's bytes: any change of
weights (another checkpoint, a WiSE-FT alpha, one more step) is another key, and no file path enters it.
Hashing ViT-L-14's 1.7 GB of weights takes about a second, once per model and run.

Dataset fingerprint: the dataset's own `fingerprint` (a string, or a method returning one) that changes
whenever any item could (image identities, labels, captions, options, crop boxes; not the preprocess,
which is a key part of its own); every dataset of items.py has one. A dataset without one is not cached:
what makes its items is unknown here.

`CachingEncoder(encoder, cache, model_key, preprocess)` is an encoders.Encoder that asks the cache first
and the wrapped encoder on a miss, so the scorers never know whether a cache is there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from bmca_clip.io import atomic_writer, sha256_json

log = logging.getLogger(__name__)

KINDS = ("images", "classifiers", "texts")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def state_dict_sha256(model: torch.nn.Module, name: str = "") -> str:
    """sha256 of `name` and every state-dict entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256(name.encode())
    for key, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()  # .cpu() copies from the device (a sync), per tensor
        digest.update(f"\0{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def describe_transform(transform) -> str:
    """repr of a preprocessing transform without memory addresses (open_clip's Compose holds a plain
    function, whose repr changes from one process to the next)."""
    return _ADDRESS.sub("", repr(transform))


def dataset_fingerprint(dataset) -> str | None:
    """What identifies a dataset's items (see the module docstring), or None when nothing does."""
    own = getattr(dataset, "fingerprint", None)
    return None if own is None else str(own() if callable(own) else own)


class EmbeddingCache:
    """Tensors computed once per key under `<root>/embeddings/<kind>/` (layout in the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser() / "embeddings"

    def path(self, kind: str, parts: dict) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown cache kind '{kind}'; allowed: {', '.join(KINDS)}")
        return self.root / kind / f"{sha256_json(parts)}.pt"

    def load(self, kind: str, parts: dict) -> tuple[Tensor, ...] | None:
        """The stored tensors for these parts, or None when absent, unreadable or for other parts."""
        path = self.path(kind, parts)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: recompute and overwrite it
            log.warning("embedding cache: cannot read %s (%s); recomputing", path, exc)
            return None
        if not isinstance(entry, dict) or entry.get("parts") != json.loads(json.dumps(parts)):
            log.warning("embedding cache: %s holds other inputs than its name says; recomputing", path)
            return None
        return tuple(entry["tensors"])

    def save(self, kind: str, parts: dict, tensors: Sequence[Tensor]) -> Path:
        """Store tensors atomically (a unique tmp file, then os.replace: concurrent shards are safe)."""
        path = self.path(kind, parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path, "wb") as f:
            torch.save({"parts": parts, "tensors": [t.detach().cpu() for t in tensors]}, f)
        return path

    def get_or_compute(
        self, kind: str, parts: dict, compute: Callable[[], tuple[Tensor, ...]]
    ) -> tuple[Tensor, ...]:
        """The stored tensors for parts, or compute() stored and returned."""
        found = self.load(kind, parts)
        if found is not None:
            log.debug("embedding cache hit: %s %s", kind, self.path(kind, parts).name)
            return found
        tensors = tuple(compute())
        self.save(kind, parts, tensors)
        return tensors


class CachingEncoder:
    """An encoders.Encoder whose outputs come from an EmbeddingCache when stored, else from `encoder`
    (then stored). model_key is state_dict_sha256(model, name) of the encoder's model; preprocess is
    describe_transform of the transform the datasets are built with."""

    def __init__(self, encoder, cache: EmbeddingCache, model_key: str, preprocess: str):
        self.encoder, self.cache, self.model_key, self.preprocess = encoder, cache, model_key, preprocess

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.encoder.amp_dtype

    def _parts(self, **more) -> dict:
        return {"model": self.model_key, "dtype": str(self.amp_dtype or torch.float32), **more}

    def images(self, loader) -> tuple[Tensor, Tensor]:
        """(features, targets) of the loader's dataset: cached when it has a fingerprint."""
        fingerprint = dataset_fingerprint(loader.dataset)
        if fingerprint is None:
            return self.encoder.images(loader)
        parts = self._parts(preprocess=self.preprocess, dataset=fingerprint)
        features, targets = self.cache.get_or_compute("images", parts, lambda: self.encoder.images(loader))
        return features, targets

    def classifier(self, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
        """Zero-shot class weights for these class names and templates."""
        parts = self._parts(classnames=list(classnames), templates=list(templates))
        compute = lambda: (self.encoder.classifier(classnames, templates),)  # noqa: E731
        return self.cache.get_or_compute("classifiers", parts, compute)[0]

    def texts(self, texts: Sequence[str]) -> Tensor:
        """Features of these texts (captions, option prompts), keyed by a hash of the texts themselves."""
        parts = self._parts(texts=sha256_json(list(texts)), n_texts=len(texts))
        return self.cache.get_or_compute("texts", parts, lambda: (self.encoder.texts(texts),))[0]
