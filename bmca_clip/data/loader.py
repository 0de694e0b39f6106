"""One rank's training batches: a torch DataLoader whose workers each run one or more logical streams
(elastic.py says which; each is a stream.py SampleStream), and the data position a checkpoint stores.

Each dataloader worker groups its streams' decoded samples into batches; a worker holding several
streams interleaves them sample by sample, always taking from the stream that has drawn the fewest
samples (ties: local order), so the order is a function of the saved positions and needs no cursor. A
batch carries the positions of the worker's streams after its last sample and their counters. Workers
are served round-robin, so the worker that produced the next batch is known; a loader resumed on the
same topology rotates its worker-to-group mapping so that its first batch comes from that worker. The
resume state (`TrainLoader.state_dict`) holds, per local stream, the position of its SampleStream, the
number of logical streams this rank holds, the source names and their commits, checked against the
resuming run's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bmca_clip.config import DataConfig
from bmca_clip.data.counters import DataCounters
from bmca_clip.data.decode import SampleDecoder
from bmca_clip.data.elastic import default_streams, rank_streams, worker_groups
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.sources import Source, check_commits, resolve_sources
from bmca_clip.data.stream import SampleStream
from bmca_clip.errors import DataError
from bmca_clip.signals import shield_data_worker

log = logging.getLogger(__name__)


class TrainStream(IterableDataset):
    """One rank's share of the training data as batches; each dataloader worker runs a group of this
    rank's logical streams (elastic.worker_groups)."""

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
        streams: int | None = None,
        positions=None,
        first_stream=0,
        policy: HttpPolicy | None = None,
    ):
        self.sources, self.decoder, self.tokenizer, self.cfg = sources, decoder, tokenizer, cfg
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.streams = streams or default_streams(cfg, world_size)  # L, over all ranks
        self.logical = rank_streams(self.streams, world_size, rank)  # this rank's, in local order
        self.groups = worker_groups(len(self.logical), cfg.num_workers)
        self.num_local = len(self.groups)  # workers that run (at most one per stream)
        self.positions = dict(positions or {})
        self.first_stream, self.policy = first_stream, policy or HttpPolicy()

    def __iter__(self):
        info = get_worker_info()
        group = ((info.id if info else 0) + self.first_stream) % self.num_local
        try:
            yield from self._batches(group)
        except DataError as err:
            if info is None:
                raise
            # Raised here, torch would hand the main process one string holding this worker's traceback;
            # TrainLoader raises the message itself, one line as the command line prints it.
            yield {"data_error": str(err)}

    def _stream(self, local: int) -> SampleStream:
        start = self.positions.get(local, {"sample": 0, "sources": [(0, 0)] * len(self.sources)})
        return SampleStream(
            self.sources,
            self.decoder,
            self.cfg,
            seed=self.seed,
            stream=self.logical[local],
            num_streams=self.streams,
            policy=self.policy,
            name=f"{self.logical[local]} of {self.streams} (rank {self.rank})",
            start=start,
        )

    def _batches(self, group: int):
        locals_ = self.groups[group]
        streams = [self._stream(j) for j in locals_]
        samples = [iter(s) for s in streams]
        images, captions, keys, taken = [], [], [], [0] * len(streams)
        while True:
            # The stream that has drawn the fewest samples: round robin from a fresh start, and after a
            # change of topology the streams that lag catch up; a function of the saved positions.
            pick = min(range(len(streams)), key=lambda i: (streams[i].sample, i))
            image, caption, key = next(samples[pick])
            images.append(image)
            captions.append(caption)
            keys.append(key)
            taken[pick] += 1
            if len(images) == self.batch_size:
                # Counted here, not where the filters pass a sample: that is a shuffle buffer ahead of
                # decoding (and counts samples that then fail to decode), so a log line showed kept > decoded.
                for stream, n in zip(streams, taken, strict=True):
                    stream.counters.kept += n
                yield {
                    "images": torch.stack(images),
                    "texts": self.tokenizer(captions),
                    "keys": keys,
                    "stream": group,
                    "positions": {j: s.position() for j, s in zip(locals_, streams, strict=True)},
                    "counters": DataCounters.total(s.counters for s in streams),
                }
                images, captions, keys, taken = [], [], [], [0] * len(streams)


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
            group = batch.pop("stream")
            self.positions.update(batch.pop("positions"))
            self._counters[group] = batch.pop("counters")
            self.next_stream = (group + 1) % self.dataset.num_local
            yield batch

    def counters(self) -> DataCounters:
        """Counts since this loader started, summed over its streams (counters.py says what each means)."""
        return DataCounters.total(self._counters.values())

    def state_dict(self) -> dict:
        return {
            "positions": {str(k): v for k, v in sorted(self.positions.items())},
            "next_stream": self.next_stream,
            "num_streams": len(self.dataset.logical),  # logical streams of this rank (elastic.py)
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
    streams: int | None = None,
) -> TrainLoader:
    """The training batches of this rank; `state` is a TrainLoader.state_dict() to resume from (for
    another topology: elastic.redistribute's), `sources` what `resolve_sources(cfg, http_policy(cfg))`
    returned (listed here when None), `streams` the run's number of logical streams (None: data.streams,
    or world size x max(1, data.num_workers))."""
    policy = http_policy(cfg)
    if sources is None:
        sources = resolve_sources(cfg, policy)
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
        streams=streams,
    )
    dataset.positions, dataset.first_stream = _check_resume_state(state, dataset, sources)
    if cfg.num_workers > dataset.num_local:
        log.info(
            "rank %d holds %d of the %d logical streams (data.streams): it runs %d of the %d data workers",
            rank,
            len(dataset.logical),
            dataset.streams,
            dataset.num_local,
            cfg.num_workers,
        )
    return TrainLoader(dataset, min(cfg.num_workers, dataset.num_local))


def _check_resume_state(state: dict | None, dataset: TrainStream, sources: list[Source]) -> tuple[dict, int]:
    if not state:
        return {}, 0
    held = len(dataset.logical)
    if state["num_streams"] != held:
        raise DataError(
            f"the data position holds {state['num_streams']} streams for rank {dataset.rank} and this run "
            f"gives it {held} of {dataset.streams} logical streams: resume through train.py, which "
            "redistributes a checkpoint's streams over the ranks and workers there are"
        )
    if state["sources"] != [s.name for s in sources]:
        raise DataError(
            f"the checkpoint's data position is for sources {state['sources']}, this run reads "
            f"{[s.name for s in sources]}: resume with the same data config"
        )
    check_commits(state.get("commits", {}), sources)  # none in checkpoints from before they were recorded
    first = state["next_stream"] if state["next_stream"] < dataset.num_local else 0
    return {int(k): v for k, v in state["positions"].items()}, first
