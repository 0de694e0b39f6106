"""One training stream: sources of tar shards (or parquet files, CSV chunks: tables.py) -> filter and balance -> seeded shuffle -> mix -> decode.

A stream reads every source shard by shard; the shard sequence of (stream, source) and the shuffle buffer
inside each shard are seeded from (seed, stream, source, shard number), and the source of each sample is
drawn from a hash of (seed, stream, sample number) by the stream's SourceMixer (mixing.py; sources.py
resolves the sources). So a stream's position is a few integers: the sample number, and per source the
shard number, how many samples of that shard were taken, and the (pairs read, pairs kept) counts behind
natural mixing. A resumed stream reopens each source's current shards and skips the samples already taken
(read, not decoded): resuming costs at most one shard read per shard in flight, and yields exactly the
samples an uninterrupted run would have.

The shuffle buffer is emptied at the end of every shard, which is what makes the position that small.
BIOMEDICA shards hold ~10,000 samples, so a buffer of a few thousand still mixes within a shard. Its shards
are written cluster by cluster, so a source reads data.shards_in_flight shards at once, sample by sample
(pool.py), each with its share of the buffer: the position per source is then the pool's, a few integers
per shard in flight. Mixing across streams comes from workers and ranks reading different shards.

Batching, dataloader workers and the resume state of a whole rank are loader.py's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import webdataset as wds

from bmca_clip.config import DataConfig
from bmca_clip.data.counters import DataCounters
from bmca_clip.data.decode import SampleDecoder
from bmca_clip.data.health import StreamHealth
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.mixing import SourceMixer
from bmca_clip.data.pool import ShardPool, Slot
from bmca_clip.data.predicates import ConceptBalancer, MetadataFilter, key_uniform, parse_metadata
from bmca_clip.data.shards import ShardCache, default_cache_dir, open_shard
from bmca_clip.data.sources import Source
from bmca_clip.data.tables import Members, table_samples
from bmca_clip.errors import ShardError


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
    """The samples of one source for one stream: its shard sequence, read data.shards_in_flight shards at
    a time by a ShardPool (pool.py); `position` is the pool's (a plain (shard, taken) with one slot).

    Each sample carries `__seen__`: the pairs read to find it (it and those dropped before it in its shard's
    order; a shard's trailing drops go to the first sample of the slot's next shard), for the mixer's kept
    fraction."""

    def __init__(self, source: Source, index: int, ctx: StreamContext, position=(0, 0)):
        self.source, self.index, self.ctx = source, index, ctx
        per_pass = self._pass_length()
        width = max(1, min(ctx.cfg.shards_in_flight, per_pass))
        self.buffer = (max(1, ctx.cfg.shuffle_buffer // width), max(1, ctx.cfg.shuffle_initial // width))
        if width == 1:  # today's buffer exactly: S=1 streams yield the samples they always did
            self.buffer = (ctx.cfg.shuffle_buffer, ctx.cfg.shuffle_initial)
        self.pool = ShardPool(
            self._shard_samples,
            width,
            None if ctx.cfg.resampled else per_pass,
            f"source {source.name}",
            ctx.cfg.max_empty_shards,
            ctx.counters,
            position,
        )

    def next(self) -> dict:
        return self.pool.next()

    def position(self):
        return self.pool.position()

    def _pass_length(self) -> int:
        """Shards this stream reads per pass of the source (all of them when resampled: drawn at random)."""
        n, streams = len(self.source.urls), self.ctx.num_streams
        if self.ctx.cfg.resampled:
            return n
        return 1 if n < streams else len(self.source.urls[self.ctx.stream :: streams])

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

    def _shard_samples(self, slot: Slot) -> Iterator[dict]:
        """The kept samples of the slot's shard, shuffled by a buffer seeded from its shard number."""
        c = self.ctx
        url, part, parts = self._assignment(slot.shard)
        rng = random.Random(_seed(c.seed, c.stream, self.index, slot.shard, 3))
        kept = self._kept(self._samples_of(url, part, parts), slot)
        return wds.shuffle(*self.buffer, rng=rng)(kept)

    def _samples_of(self, url: str, part: int, parts: int) -> Iterator[dict]:
        if self.source.table is not None:  # a parquet file or a CSV chunk (tables.py)
            c = self.ctx
            metadata = self.source.filtered and (c.keep.needs_metadata or c.balance.active)
            members = Members(c.cfg.image_key, c.cfg.caption_key, metadata)
            rows = table_samples(self.source.table, url, members, c.policy, c.counters.transport)
            yield from (sample for n, sample in enumerate(rows) if n % parts == part)
            return
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

    def _kept(self, samples: Iterator[dict], slot: Slot) -> Iterator[dict]:
        """The samples that pass the filter and the balancing draw, slimmed to what decoding needs: the
        json (with BIOMEDICA's full article text) never enters the shuffle buffer or a batch."""
        c, cfg = self.ctx, self.ctx.cfg
        wanted = (cfg.image_key, cfg.caption_key, "__key__", "__url__")
        needs_meta = c.keep.needs_metadata or c.balance.active
        filtered = self.source.filtered and (c.keep.active or c.balance.active)
        for n, sample in enumerate(samples):
            if filtered:
                try:
                    meta = parse_metadata(sample.get("json", b"{}")) if needs_meta else {}
                except ValueError:
                    c.counters.count("filtered", "bad_metadata")
                    slot.dropped += 1
                    continue
                reason = c.keep.reason(meta, sample.get(cfg.caption_key, b"").decode("utf-8", "replace"))
                if (
                    reason is None
                    and c.balance.active
                    and not c.balance.accept(meta, self._draw(sample, n, slot.shard))
                ):
                    reason = "balance"
                if reason is not None:
                    c.counters.count("filtered", reason)
                    slot.dropped += 1
                    continue
            slim = {k: sample[k] for k in wanted if k in sample}
            if "__image_ref__" in sample:  # a table row without its image: where it was looked for
                slim["__image_ref__"] = sample["__image_ref__"]
            elif len(slim) < len(wanted):  # what the shards hold instead, for the error a wrong key gets
                slim["__members__"] = tuple(k for k in sample if not k.startswith("__"))
            slim["__seen__"], slot.dropped = slot.dropped + 1, 0
            yield slim

    def _draw(self, sample: dict, n: int, shard: int) -> float:
        c = self.ctx
        if (
            c.cfg.balance.fixed_subset
        ):  # the same samples pass on every visit: a fixed subset, as in the paper
            return key_uniform(sample["__key__"], c.seed)
        return _uniform(c.seed, c.stream, self.index, shard, n, 5)


def shard_cache(cfg: DataConfig) -> ShardCache | None:
    if cfg.cache_limit_gb <= 0:
        return None
    return ShardCache(default_cache_dir(cfg.cache_dir), int(cfg.cache_limit_gb * 2**30))


def _raise(exn: Exception) -> bool:
    raise exn


def _with_url(files, url: str):
    for f in files:
        f["__url__"] = url
        yield f


class SampleStream:
    """The decoded samples of one stream, mixed across its sources: yields (image, caption, key).

    `position()` read after any sample is where a stream resumed from it yields the next one; `counters`
    counts what the stream did (counters.py), except `kept`, which the batching counts."""

    def __init__(
        self,
        sources: list[Source],
        decoder: SampleDecoder,
        cfg: DataConfig,
        *,
        seed: int,
        stream: int,
        num_streams: int,
        policy: HttpPolicy,
        name: str,
        start: dict,
    ):
        self.sources, self.decoder, self.seed, self.stream = sources, decoder, seed, stream
        self.sample = start["sample"]
        self.mixer = SourceMixer(
            [s.probability for s in sources],
            cfg.mixing,
            cfg.mixing_prior_samples,
            start.get("mixing"),  # absent in checkpoints from before natural mixing: the prior again
        )
        self.counters = DataCounters()
        self.health = StreamHealth(cfg, name, self.counters)
        ctx = StreamContext(
            cfg,
            seed,
            stream,
            num_streams,
            policy,
            MetadataFilter(cfg.filter),
            ConceptBalancer(cfg.balance),
            self.counters,
            shard_cache(cfg),
        )
        self.readers = [
            SourceReader(s, i, ctx, p) for i, (s, p) in enumerate(zip(sources, start["sources"], strict=True))
        ]

    def __iter__(self) -> Iterator[tuple]:
        counters = self.counters
        while True:
            pick = self.mixer.pick(_uniform(self.seed, self.stream, self.sample, 6))
            sample, name = self.readers[pick].next(), self.sources[pick].name
            seen = sample.pop("__seen__")
            self.mixer.observe(pick, seen)
            counters.count("drawn", name)
            counters.count("read", name, seen)
            self.sample += 1
            try:
                image, caption = self.decoder(sample, _seed(self.seed, self.stream, self.sample, 4))
            except Exception as err:  # any one sample, whatever it raises, is skipped and counted
                self.health.skipped(err, sample)  # counts it; raises when too many fail
                continue
            counters.decoded += 1
            yield image, caption, sample["__key__"]

    def position(self) -> dict:
        """The sample number, per source (shard number, samples taken of it), and the mixer's state."""
        return {
            "sample": self.sample,
            "sources": [r.position() for r in self.readers],
            "mixing": self.mixer.state(),
        }
