"""The training stream: sources of tar shards -> filter and balance -> seeded shuffle -> mix -> batches.

Each rank runs one stream per dataloader worker. A stream reads every source shard by shard; the shard
sequence of (stream, source) and the shuffle buffer inside each shard are seeded from
(seed, stream, source, shard number), and the source of each sample is drawn from a hash of
(seed, stream, sample number) by the stream's SourceMixer (mixing.py; sources.py resolves the sources). So
a stream's position is a few integers: the sample number, and per source the shard number, how many
samples of that shard were taken, and the (pairs read, pairs kept) counts behind natural mixing. Each
batch carries that position; a resumed stream reopens each source's current shard and skips the samples
already taken (read, not decoded): resuming costs at most one shard read per source, and yields exactly
the samples an uninterrupted run would have.

The shuffle buffer is emptied at the end of every shard, which is what makes the position that small.
BIOMEDICA shards hold ~10,000 samples, so a buffer of a few thousand still mixes within a shard, and the
mixing across shards comes from streams, workers and ranks reading different shards at once.

Dataloader workers are served round-robin, so the stream that produced the next batch is known; a resumed
loader rotates its worker-to-stream mapping so that its first batch comes from that stream.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bmca_clip.config import DataConfig
from bmca_clip.data.counters import DataCounters
from bmca_clip.data.decode import PilTransform as PilTransform  # part of this module's interface
from bmca_clip.data.decode import SampleDecoder
from bmca_clip.data.filters import (
    ConceptBalancer,
    MetadataFilter,
    key_uniform,
    parse_metadata,
)
from bmca_clip.data.health import DECODE_ERRORS as DECODE_ERRORS  # part of this module's interface
from bmca_clip.data.health import StreamHealth
from bmca_clip.data.hub import HttpPolicy, ShardCache, ShardError, default_cache_dir, open_shard
from bmca_clip.data.mixing import SourceMixer
from bmca_clip.data.sources import DataError, Source, check_commits, resolve_sources
from bmca_clip.data.sources import expand_shards as expand_shards  # part of this module's interface
from bmca_clip.signals import shield_data_worker

log = logging.getLogger(__name__)


def _seed(*parts: int) -> int:
    return hash(tuple(parts)) & 0x7FFF_FFFF_FFFF


def _uniform(*parts: int) -> float:
    return random.Random(_seed(*parts)).random()


@dataclass
class StreamContext:
    """What every source reader of one stream shares."""

    cfg: DataConfig
    seed: int
    stream: int  # global stream number: rank * streams_per_rank + local stream
    num_streams: int
    policy: HttpPolicy
    keep: MetadataFilter
    balance: ConceptBalancer
    counters: DataCounters
    cache: ShardCache | None = None


class SourceReader:
    """The samples of one source for one stream, shard after shard; `position` = (shard number, taken).

    Each sample carries `__seen__`: the pairs read to find it (it and those dropped before it in shard
    order; a shard's trailing drops go to the next shard's first sample), for the mixer's kept fraction."""

    def __init__(self, source: Source, index: int, ctx: StreamContext, position=(0, 0)):
        self.source, self.index, self.ctx = source, index, ctx
        self.shard, self.taken = position
        self._dropped = self._carry = 0  # dropped since the last kept pair; trailing drops of past shards
        self._samples = self._generate()

    def next(self) -> dict:
        return next(self._samples)

    def _assignment(self, i: int) -> tuple[str, int, int]:
        """(url, part, parts) of this stream's i-th shard; with fewer shards than streams, streams
        sharing a shard take every parts-th sample of it, so no sample is read twice and no stream idles."""
        urls, g, n, c = self.source.urls, self.ctx.stream, len(self.source.urls), self.ctx
        if c.cfg.resampled:
            return urls[random.Random(_seed(c.seed, g, self.index, i, 1)).randrange(n)], 0, 1
        if n < c.num_streams:
            return urls[g % n], g // n, len(range(g % n, c.num_streams, n))
        own = urls[g :: c.num_streams]
        order = list(own)
        random.Random(_seed(c.seed, g, self.index, i // len(own), 2)).shuffle(order)
        return order[i % len(own)], 0, 1

    def _generate(self) -> Iterator[dict]:
        empty_in_a_row, last_problem = 0, "no sample passed the filters"
        while True:
            url, part, parts = self._assignment(self.shard)
            got, self._dropped = 0, 0
            try:
                for n, sample in enumerate(self._shuffled(url, part, parts)):
                    if n < self.taken:
                        continue  # resuming: already consumed (and counted) before the checkpoint
                    self.taken, got = n + 1, got + 1
                    sample["__seen__"] += self._carry
                    self._carry = 0
                    yield sample
            except ShardError as err:
                self.ctx.counters.count("shards_failed", err.reason)
                last_problem = str(err)
                log.warning("%s", err)
            self._carry += self._dropped
            empty_in_a_row = 0 if got else empty_in_a_row + 1
            if empty_in_a_row >= self.ctx.cfg.max_empty_shards:
                raise DataError(
                    f"source {self.source.name}: {empty_in_a_row} shards in a row gave no usable sample "
                    f"(last: {last_problem}); check the shards, the HF token and data.filter"
                )
            self.shard, self.taken = self.shard + 1, 0

    def _shuffled(self, url: str, part: int, parts: int) -> Iterator[dict]:
        c = self.ctx
        rng = random.Random(_seed(c.seed, c.stream, self.index, self.shard, 3))
        kept = self._kept(self._samples_of(url, part, parts))
        return wds.shuffle(c.cfg.shuffle_buffer, c.cfg.shuffle_initial, rng=rng)(kept)

    def _samples_of(self, url: str, part: int, parts: int) -> Iterator[dict]:
        with open_shard(url, self.ctx.policy, self.ctx.counters.transport, self.ctx.cache) as stream:
            files = wds.tariterators.tar_file_iterator(stream, handler=_raise)
            try:
                for n, sample in enumerate(
                    wds.tariterators.group_by_keys(_with_url(files, url), handler=_raise)
                ):
                    if n % parts == part:
                        yield sample
            except ShardError:
                raise
            except Exception as err:  # tarfile's errors on a truncated or non-tar body
                raise ShardError(url, "unreadable_tar", f"{type(err).__name__}: {err}") from None

    def _kept(self, samples: Iterator[dict]) -> Iterator[dict]:
        """The samples that pass the filter and the balancing draw, slimmed to what decoding needs: the
        json (with BIOMEDICA's full article text) never enters the shuffle buffer or a batch."""
        c, cfg = self.ctx, self.ctx.cfg
        wanted = (cfg.image_key, cfg.caption_key, "__key__", "__url__")
        needs_meta = c.keep.needs_metadata or c.balance.active
        for n, sample in enumerate(samples):
            if c.keep.active or c.balance.active:
                try:
                    meta = parse_metadata(sample.get("json", b"{}")) if needs_meta else {}
                except ValueError:
                    c.counters.count("filtered", "bad_metadata")
                    self._dropped += 1
                    continue
                reason = c.keep.reason(meta, sample.get(cfg.caption_key, b"").decode("utf-8", "replace"))
                if reason is None and c.balance.active and not c.balance.accept(meta, self._draw(sample, n)):
                    reason = "balance"
                if reason is not None:
                    c.counters.count("filtered", reason)
                    self._dropped += 1
                    continue
            slim = {k: sample[k] for k in wanted if k in sample}
            if len(slim) < len(wanted):  # what the shards hold instead, for the error a wrong key gets
                slim["__members__"] = tuple(k for k in sample if not k.startswith("__"))
            slim["__seen__"], self._dropped = self._dropped + 1, 0
            yield slim

    def _draw(self, sample: dict, n: int) -> float:
        c = self.ctx
        if (
            c.cfg.balance.fixed_subset
        ):  # the same samples pass on every visit: a fixed subset, as in the paper
            return key_uniform(sample["__key__"], c.seed)
        return _uniform(c.seed, c.stream, self.index, self.shard, n, 5)


def _shard_cache(cfg: DataConfig) -> ShardCache | None:
    if cfg.cache_limit_gb <= 0:
        return None
    return ShardCache(default_cache_dir(cfg.cache_dir), int(cfg.cache_limit_gb * 2**30))


def _raise(exn: Exception) -> bool:
    raise exn


def _with_url(files, url: str):
    for f in files:
        f["__url__"] = url
        yield f


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
        stream = self.rank * self.num_local + local
        start = self.positions.get(local, {"sample": 0, "sources": [(0, 0)] * len(self.sources)})
        mixer = SourceMixer(
            [s.probability for s in self.sources],
            self.cfg.mixing,
            self.cfg.mixing_prior_samples,
            start.get("mixing"),  # absent in checkpoints from before natural mixing: the prior again
        )
        counters = DataCounters()
        health = StreamHealth(self.cfg, f"{local} of rank {self.rank}", counters)
        ctx = StreamContext(
            self.cfg,
            self.seed,
            stream,
            self.world_size * self.num_local,
            self.policy,
            MetadataFilter(self.cfg.filter),
            ConceptBalancer(self.cfg.balance),
            counters,
            _shard_cache(self.cfg),
        )
        readers = [
            SourceReader(s, i, ctx, tuple(p))
            for i, (s, p) in enumerate(zip(self.sources, start["sources"], strict=True))
        ]
        t, images, captions, keys = start["sample"], [], [], []
        while True:
            pick = mixer.pick(_uniform(self.seed, stream, t, 6))
            sample, name = readers[pick].next(), self.sources[pick].name
            seen = sample.pop("__seen__")
            mixer.observe(pick, seen)
            counters.count("drawn", name)
            counters.count("read", name, seen)
            t += 1
            try:
                image, caption = self.decoder(sample, _seed(self.seed, stream, t, 4))
            except Exception as err:  # any one sample, whatever it raises, is skipped and counted
                health.skipped(err, sample)  # counts it; raises when too many fail
                continue
            counters.decoded += 1
            images.append(image)
            captions.append(caption)
            keys.append(sample["__key__"])
            if len(images) == self.batch_size:
                # Counted here, not where the filters pass a sample: that is a shuffle buffer ahead of
                # decoding (and counts samples that then fail to decode), so a log line showed kept > decoded.
                counters.kept += len(images)
                position = {
                    "sample": t,
                    "sources": [(r.shard, r.taken) for r in readers],
                    "mixing": mixer.state(),
                }
                yield {
                    "images": torch.stack(images),
                    "texts": self.tokenizer(captions),
                    "keys": keys,
                    "stream": local,
                    "position": position,
                    "counters": counters.copy(),
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
