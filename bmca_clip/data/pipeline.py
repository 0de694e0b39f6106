"""The training stream: WebDataset tar shards -> seeded shuffle -> decoded, tokenised batches.

Everything random is seeded from (seed, rank, stream): the same config yields the same batches, and a
stream's position is one integer, the number of shuffled samples it has passed (its cursor). Each batch
carries the cursor of its stream, the trainer keeps the cursor of the last batch it consumed, and a resumed
run starts every stream at its cursor: the samples that follow are exactly those an uninterrupted run sees.
Samples before the cursor are skipped before decoding, so a resume costs reading them, not decoding them.

Dataloader workers are served round-robin, so the stream that produced the next batch is known; a resumed
loader rotates its worker-to-stream mapping so that its first batch comes from that stream.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand
import torch
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bmca_clip.config import DataConfig

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """The data cannot feed training; the message names the shards or samples and what to do."""


def expand_shards(spec: str) -> list[str]:
    """Shard URLs from 'a/{000..009}.tar', a folder (its *.tar, recursively), a file or URL; '::' joins."""
    urls: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split("::"))):
        for item in braceexpand.braceexpand(part):
            path = Path(item)
            if "://" in item or item.startswith("pipe:"):
                urls.append(item)
            elif path.is_dir():
                found = sorted(str(p) for p in path.rglob("*.tar"))
                if not found:
                    raise DataError(f"data.train_shards: folder {item} holds no .tar shards")
                urls.extend(found)
            elif path.is_file():
                urls.append(str(path))
            else:
                raise DataError(
                    f"data.train_shards: {item} does not exist. For the demo corpus run "
                    "`python -m bmca_clip.data.synthetic --out data/synthetic`."
                )
    if not urls:
        raise DataError(f"data.train_shards={spec!r} names no shards")
    return urls


def _seed(*parts: int) -> int:
    return hash(tuple(parts)) & 0x7FFF_FFFF_FFFF


def shard_order(
    urls: list[str], *, seed: int, stream: int, num_streams: int, resampled: bool
) -> Iterator[dict]:
    """Endless shard sequence of one stream: drawn with replacement, or epochs over its own share."""
    if resampled:
        rng = random.Random(_seed(seed, stream, 1))
        while True:
            yield {"url": rng.choice(urls)}
    share = urls[stream::num_streams]
    if not share:
        raise DataError(
            f"{len(urls)} shards cannot give each of {num_streams} data streams (ranks x workers) its own "
            "shard; use data.resampled=true or fewer data.num_workers"
        )
    for epoch in range(2**62):
        order = list(share)
        random.Random(_seed(seed, stream, epoch, 2)).shuffle(order)
        yield from ({"url": u} for u in order)


@dataclass
class SampleDecoder:
    """Turns raw tar members into (image tensor, caption); seeds augmentation from the sample's place."""

    preprocess: Callable
    image_key: str = "jpg"
    caption_key: str = "txt"

    def __call__(self, sample: dict, aug_seed: int) -> tuple[torch.Tensor, str]:
        if self.image_key not in sample or self.caption_key not in sample:
            raise ValueError(f"missing {self.image_key!r} or {self.caption_key!r}")
        caption = sample[self.caption_key].decode("utf-8").strip()
        if not caption:
            raise ValueError("empty caption")
        with Image.open(io.BytesIO(sample[self.image_key])) as img:
            image = img.convert("RGB")
        # The random crop depends on the sample alone, not on what this process drew before: that is what
        # makes a resumed stream augment exactly as the uninterrupted one. fork_rng leaves the global RNG be.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(aug_seed)
            return self.preprocess(image), caption


@dataclass
class StreamStats:
    """Counters of one stream, shipped with each batch so the trainer can log and police them."""

    seen: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


class TrainStream(IterableDataset):
    """One rank's share of the training data as batches; each dataloader worker runs one stream."""

    def __init__(
        self,
        urls,
        decoder,
        tokenizer,
        cfg: DataConfig,
        *,
        batch_size,
        seed,
        rank=0,
        world_size=1,
        num_workers=1,
        cursors=None,
        first_stream=0,
    ):
        self.urls, self.decoder, self.tokenizer, self.cfg = urls, decoder, tokenizer, cfg
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_local = max(1, num_workers)
        self.cursors = dict(cursors or {})
        self.first_stream = first_stream

    def __iter__(self):
        info = get_worker_info()
        local = ((info.id if info else 0) + self.first_stream) % self.num_local
        yield from self._batches(local, self.rank * self.num_local + local)

    def _batches(self, local: int, stream: int):
        cfg, start = self.cfg, self.cursors.get(local, 0)
        shards = shard_order(
            self.urls,
            seed=self.seed,
            stream=stream,
            num_streams=self.world_size * self.num_local,
            resampled=cfg.resampled,
        )
        samples = wds.tarfile_samples(shards, handler=_warn_and_skip)
        shuffled = wds.shuffle(
            cfg.shuffle_buffer, cfg.shuffle_initial, rng=random.Random(_seed(self.seed, stream, 3))
        )
        stats, images, captions, keys = StreamStats(), [], [], []
        for index, sample in enumerate(shuffled(iter(samples))):
            if index < start:
                continue
            stats.seen += 1
            try:
                image, caption = self.decoder(sample, _seed(self.seed, stream, index, 4))
            except (OSError, ValueError, UnidentifiedImageError, SyntaxError) as err:
                reason = type(err).__name__
                stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
                log.debug("skipping sample %s from %s: %s", sample.get("__key__"), sample.get("__url__"), err)
                continue
            images.append(image)
            captions.append(caption)
            keys.append(sample["__key__"])
            if len(images) == self.batch_size:
                yield {
                    "images": torch.stack(images),
                    "texts": self.tokenizer(captions),
                    "keys": keys,
                    "stream": local,
                    "cursor": index + 1,
                    "seen": stats.seen,
                    "skipped": dict(stats.skipped),
                }
                images, captions, keys = [], [], []


def _warn_and_skip(exn: Exception) -> bool:
    log.warning("skipping unreadable shard data: %s", exn)
    return True


class TrainLoader:
    """Iterates batches and remembers, per stream, the cursor of the last batch handed out."""

    def __init__(self, dataset: TrainStream, num_workers: int):
        self.dataset, self.num_workers = dataset, num_workers
        self.cursors = dict(dataset.cursors)
        self.next_stream = dataset.first_stream
        self.seen = 0
        self.skipped: dict[str, int] = {}
        self._last_stats: dict[int, tuple[int, dict]] = {}

    def __iter__(self):
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if self.num_workers else None,
        )
        for batch in loader:
            stream = batch.pop("stream")
            self.cursors[stream] = batch.pop("cursor")
            self._last_stats[stream] = (batch.pop("seen"), batch.pop("skipped"))
            self.next_stream = (stream + 1) % self.dataset.num_local
            yield batch

    def stats(self) -> tuple[int, dict[str, int]]:
        """Samples read and skipped (by reason) since this loader started, over all its streams."""
        seen, skipped = 0, {}
        for stream_seen, stream_skipped in self._last_stats.values():
            seen += stream_seen
            for reason, n in stream_skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
        return seen, skipped

    def state_dict(self) -> dict:
        return {
            "cursors": {str(k): v for k, v in self.cursors.items()},
            "next_stream": self.next_stream,
            "num_streams": self.dataset.num_local,
        }


def build_train_loader(
    cfg: DataConfig,
    preprocess,
    tokenizer,
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    state: dict | None = None,
) -> TrainLoader:
    """The training batches of this rank; `state` is a TrainLoader.state_dict() to resume from."""
    urls = expand_shards(cfg.train_shards)
    cursors, first = {}, 0
    if state:
        if state["num_streams"] != max(1, cfg.num_workers):
            raise DataError(
                f"the checkpoint's data position was saved with {state['num_streams']} streams per rank "
                f"(data.num_workers), this run has {max(1, cfg.num_workers)}: set "
                f"data.num_workers={state['num_streams']} to resume exactly"
            )
        cursors = {int(k): v for k, v in state["cursors"].items()}
        first = state["next_stream"]
    decoder = SampleDecoder(preprocess, cfg.image_key, cfg.caption_key)
    dataset = TrainStream(
        urls,
        decoder,
        tokenizer,
        cfg,
        batch_size=batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=cfg.num_workers,
        cursors=cursors,
        first_stream=first,
    )
    return TrainLoader(dataset, cfg.num_workers)
