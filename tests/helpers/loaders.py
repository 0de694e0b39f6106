"""A training loader of the tiny model on a DataConfig, and the keys of its first batches: what the data
tests compare between an uninterrupted and a resumed stream."""

from __future__ import annotations

import open_clip

from bmca_clip.config import DataConfig
from bmca_clip.data.decode import PilTransform
from bmca_clip.data.loader import TrainLoader, build_train_loader


def tiny_loader(
    cfg: DataConfig, *, batch_size: int, state=None, train: bool = False, streams: int | None = None
) -> TrainLoader:
    return build_train_loader(
        cfg,
        PilTransform(open_clip.image_transform(32, is_train=train)),
        open_clip.get_tokenizer("bmca-tiny"),
        batch_size=batch_size,
        seed=0,
        state=state,
        streams=streams,
    )


def first_batch_keys(loader: TrainLoader, n_batches: int) -> list[list[str]]:
    """The sample keys of the loader's first n batches (it stays where they left it)."""
    batches = []
    for batch in loader:
        batches.append(batch["keys"])
        if len(batches) == n_batches:
            break
    return batches
