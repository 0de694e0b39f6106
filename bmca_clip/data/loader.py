"""One rank's training batches: a torch DataLoader whose workers each run one stream (stream.py), and the
data position a checkpoint stores to resume exactly.

Each dataloader worker groups its stream's decoded samples into batches; a batch carries the stream's
position after its last sample and the stream's counters. Workers are served round-robin, so the stream
that produced the next batch is known; a resumed loader rotates its worker-to-stream mapping so that its
first batch comes from that stream. The resume state (`TrainLoader.state_dict`) holds, per stream, the
position of stream.py's SampleStream, plus the number of streams, the source names and their commits,
checked against the resuming run's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bmca_clip.config import DataConfig
from bmca_clip.data.counters import DataCounters
from bmca_clip.data.decode import SampleDecoder
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.sources import Source, check_commits, resolve_sources
from bmca_clip.data.stream import SampleStream
from bmca_clip.errors import DataError
from bmca_clip.signals import shield_data_worker


class TrainStream(IterableDataset):
    """One rank's share of the training data as batches; each dataloader worker runs one stream."""

    def __init__(
        self,
        sources,
        decoder,
        tokenizer,
        cfg: DataConfig,
        *,
        batch_size,
        seed,
        rank=0,
        world_size=1,
        positions=None,
        first_stream=0,
        policy: HttpPolicy | None = None,
    ):
        self.sources, self.decoder, self.tokenizer, self.cfg = sources, decoder, tokenizer, cfg
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_local = max(1, cfg.num_workers)
        self.positions = dict(positions or {})
        self.first_stream, self.policy = first_stream, policy or HttpPolicy()

    def __iter__(self):
        info = get_worker_info()
        local = ((info.id if info else 0) + self.first_stream) % self.num_local
        try:
            yield from self._batches(local)
        except DataError as err:
            if info is None:
                raise
            # Raised here, torch would hand the main process one string holding this worker's traceback;
            # TrainLoader raises the message itself, one line as the command line prints it.
            yield {"data_error": str(err)}

    def _batches(self, local: int):
        start = self.positions.get(local, {"sample": 0, "sources": [(0, 0)] * len(self.sources)})
        stream = SampleStream(
            self.sources,
            self.decoder,
            self.cfg,
            seed=self.seed,
            stream=self.rank * self.num_local + local,
            num_streams=self.world_size * self.num_local,
            policy=self.policy,
            name=f"{local} of rank {self.rank}",
            start=start,
        )
        images, captions, keys = [], [], []
        for image, caption, key in stream:
            images.append(image)
            captions.append(caption)
            keys.append(key)
            if len(images) == self.batch_size:
                # Counted here, not where the filters pass a sample: that is a shuffle buffer ahead of
                # decoding (and counts samples that then fail to decode), so a log line showed kept > decoded.
                stream.counters.kept += len(images)
                yield {
                    "images": torch.stack(images),
                    "texts": self.tokenizer(captions),
                    "keys": keys,
                    "stream": local,
                    "position": stream.position(),
                    "counters": stream.counters.copy(),
                }
                images, captions, keys = [], [], []


class TrainLoader:
    """Iterates batches and remembers, per stream, the position after the last batch handed out."""

    def __init__(self, dataset: TrainStream, num_workers: int):
        self.dataset, self.num_workers = dataset, num_workers
        self.positions = dict(dataset.positions)
        self.next_stream = dataset.first_stream
        self._counters: dict[int, DataCounters] = {}

    def __iter__(self):
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if self.num_workers else None,
            worker_init_fn=shield_data_worker,  # a signal to the whole job is for the main process only
            # Its base seed drawn from a generator of its own, not the global RNG: a resumed run creates
            # its DataLoader after restoring that RNG, so a draw from it would shift dropout's stream.
            generator=torch.Generator().manual_seed(self.dataset.seed),
        )
        for batch in loader:
            if "data_error" in batch:  # a worker's DataError (TrainStream.__iter__)
                raise DataError(batch["data_error"])
            stream = batch.pop("stream")
            self.positions[stream] = batch.pop("position")
            self._counters[stream] = batch.pop("counters")
            self.next_stream = (stream + 1) % self.dataset.num_local
            yield batch

    def counters(self) -> DataCounters:
        """Counts since this loader started, summed over its streams (counters.py says what each means)."""
        return DataCounters.total(self._counters.values())

    def state_dict(self) -> dict:
        return {
            "positions": {str(k): v for k, v in self.positions.items()},
            "next_stream": self.next_stream,
            "num_streams": self.dataset.num_local,
            "sources": [s.name for s in self.dataset.sources],
            "commits": {s.name: s.commit for s in self.dataset.sources},
        }


def http_policy(cfg: DataConfig) -> HttpPolicy:
    """How shard and listing requests retry, from data.retries, data.timeout_s and data.retry_backoff_s."""
    return HttpPolicy(retries=cfg.retries, timeout_s=cfg.timeout_s, backoff_s=cfg.retry_backoff_s)


def build_train_loader(
    cfg: DataConfig,
    image_fn: Callable[[bytes], torch.Tensor],
    tokenizer,
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    state: dict | None = None,
    sources: list[Source] | None = None,
) -> TrainLoader:
    """The training batches of this rank; `state` is a TrainLoader.state_dict() to resume from, `sources`
    what `resolve_sources(cfg, http_policy(cfg))` returned (listed here when None)."""
    policy = http_policy(cfg)
    if sources is None:
        sources = resolve_sources(cfg, policy)
    positions, first = _check_resume_state(state, cfg, sources)
    decoder = SampleDecoder(image_fn, cfg.image_key, cfg.caption_key)
    dataset = TrainStream(
        sources,
        decoder,
        tokenizer,
        cfg,
        batch_size=batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        positions=positions,
        first_stream=first,
        policy=policy,
    )
    return TrainLoader(dataset, cfg.num_workers)


def _check_resume_state(state: dict | None, cfg: DataConfig, sources: list[Source]) -> tuple[dict, int]:
    if not state:
        return {}, 0
    streams = max(1, cfg.num_workers)
    if state["num_streams"] != streams:
        raise DataError(
            f"the checkpoint's data position was saved with {state['num_streams']} streams per rank "
            f"(data.num_workers), this run has {streams}: set data.num_workers={state['num_streams']} to resume exactly"
        )
    if state["sources"] != [s.name for s in sources]:
        raise DataError(
            f"the checkpoint's data position is for sources {state['sources']}, this run reads "
            f"{[s.name for s in sources]}: resume with the same data config"
        )
    check_commits(state.get("commits", {}), sources)  # none in checkpoints from before they were recorded
    return {int(k): v for k, v in state["positions"].items()}, state["next_stream"]
