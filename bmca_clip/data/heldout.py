"""The validation pairs: the held-out shards of the sources (sources.py keeps them out of training), read in
one fixed order, without shuffling or resampling, so that every call, rank and resume gets the same pairs.

Order: the sources take turns in proportion to their sampling probability (each next pair comes from the
source furthest below its share), and inside a source its held-out shards take turns one pair at a time, in
the order of their names. BIOMEDICA's shards are written cluster by cluster, so the first pairs of one shard
are a few clusters: several held-out shards spread over the listing make a more varied slice. data.filter
applies (a filtered run is validated on what it trains on); data.balance does not (it is a sampling weight).
A pair whose image does not decode is skipped, as in training; an unreadable held-out shard is left out with a
warning. Images go through the eval-mode transform the caller passes (uint8, normalised on the device).
"""

from __future__ import annotations

import contextlib
import logging
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import webdataset as wds

from bmca_clip.config import DataConfig
from bmca_clip.data.decode import SampleDecoder
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.predicates import MetadataFilter, parse_metadata
from bmca_clip.data.shards import open_shard
from bmca_clip.data.sources import Source
from bmca_clip.data.tables import Members, table_samples
from bmca_clip.errors import DataError, ShardError

log = logging.getLogger(__name__)


@dataclass
class HeldOutPairs:
    images: torch.Tensor  # uint8 [n, 3, h, w], from the eval-mode transform
    captions: list[str]
    keys: list[str]  # "<source>/<sample key>", for a reader of the log who wants to look one up


def read_heldout(
    sources: list[Source],
    cfg: DataConfig,
    image_fn: Callable[[bytes], torch.Tensor],
    n: int,
    policy: HttpPolicy | None = None,
) -> HeldOutPairs:
    """The first `n` usable pairs of the sources' held-out shards in the fixed order (fewer if they hold
    fewer); DataError when they hold none."""
    policy = policy or HttpPolicy()
    held = [s for s in sources if s.heldout]
    decoder = SampleDecoder(image_fn, cfg.image_key, cfg.caption_key)
    images, captions, keys = [], [], []
    with contextlib.ExitStack() as opened:
        streams = [opened.enter_context(contextlib.closing(_source_pairs(s, cfg, policy))) for s in held]
        for i, sample in _proportional(streams, [s.probability for s in held]):
            if len(images) == n:
                break
            try:
                image, caption = decoder(sample, 0)
            except Exception as err:  # as in training: one unusable pair is skipped, not fatal
                log.debug("validation pair %s skipped: %s", sample.get("__key__"), err)
                continue
            images.append(image)
            captions.append(caption)
            keys.append(f"{held[i].name}/{sample['__key__']}")
    if not images:
        names = ", ".join(s.name for s in held) or "none"
        raise DataError(
            f"no usable validation pair in the held-out shards (sources holding shards out: {names})"
        )
    return HeldOutPairs(torch.stack(images), captions, keys)


def _proportional(streams: list[Iterator[dict]], weights: list[float]) -> Iterator[tuple[int, dict]]:
    """(stream index, sample): each next one from the live stream furthest below its share of the weights."""
    taken = [0] * len(streams)
    live = [i for i, w in enumerate(weights) if w > 0]
    while live:
        i = min(live, key=lambda j: ((taken[j] + 1) / weights[j], j))
        sample = next(streams[i], None)
        if sample is None:
            live.remove(i)
            continue
        taken[i] += 1
        yield i, sample


def _source_pairs(source: Source, cfg: DataConfig, policy: HttpPolicy) -> Iterator[dict]:
    """One source's held-out samples that pass data.filter, its shards taking turns one sample at a time."""
    keep = MetadataFilter(cfg.filter)
    filtered = source.filtered and keep.active
    with contextlib.ExitStack() as opened:
        shards = [
            opened.enter_context(contextlib.closing(_shard_samples(source, url, cfg, policy, keep)))
            for url in sorted(source.heldout)
        ]
        while shards:
            for shard in list(shards):
                sample = next(shard, None)
                if sample is None:
                    shards.remove(shard)
                    continue
                if filtered and _rejected(keep, sample, cfg.caption_key):
                    continue
                yield sample


def _rejected(keep: MetadataFilter, sample: dict, caption_key: str) -> bool:
    try:
        meta = parse_metadata(sample.get("json", b"{}")) if keep.needs_metadata else {}
    except ValueError:
        return True
    return keep.reason(meta, sample.get(caption_key, b"").decode("utf-8", "replace")) is not None


def _shard_samples(
    source: Source, url: str, cfg: DataConfig, policy: HttpPolicy, keep: MetadataFilter
) -> Iterator[dict]:
    """The samples of one held-out shard in file order; an unreadable shard ends early with a warning."""
    stats: dict[str, int] = {}
    try:
        if source.table is not None:  # a parquet file or a CSV chunk (tables.py)
            members = Members(cfg.image_key, cfg.caption_key, source.filtered and keep.needs_metadata)
            yield from table_samples(source.table, url, members, policy, stats)
            return
        with open_shard(url, policy, stats) as stream:
            files = (
                {**f, "__url__": url} for f in wds.tariterators.tar_file_iterator(stream, handler=_raise)
            )
            yield from wds.tariterators.group_by_keys(files, handler=_raise)
    except ShardError as err:
        log.warning("validation: held-out shard skipped: %s", err)
    except (
        tarfile.TarError,
        OSError,
        ValueError,
        KeyError,
    ) as err:  # tarfile's errors on a truncated or non-tar body
        log.warning("validation: held-out shard %s unreadable (%s: %s)", url, type(err).__name__, err)


def _raise(exn: Exception) -> bool:
    raise exn
