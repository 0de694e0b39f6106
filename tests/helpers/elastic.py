"""A corpus whose sample keys name their shard, and what an elastic-resume test compares: per logical
stream, the keys a loader handed out, and the keys that stream yields read on its own."""

from __future__ import annotations

import itertools
from pathlib import Path

import open_clip
import webdataset as wds

from bmca_clip.config import DataConfig
from bmca_clip.data.decode import PilTransform, SampleDecoder
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.sources import resolve_sources
from bmca_clip.data.stream import SampleStream
from tests.helpers.shards import jpeg


def write_keyed_corpus(folder: Path, shards: int, per_shard: int) -> Path:
    """Tar shards 000.tar ... whose samples are keyed '<shard>_<i>' (e.g. 03_05)."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{s:03d}.tar")) as sink:
            for i in range(per_shard):
                sink.write({"__key__": f"{s:02d}_{i:02d}", "jpg": jpeg(10 * s + i), "txt": f"figure {s} {i}"})
    return folder


def elastic_data(corpus: Path, **kw) -> DataConfig:
    """Epochs over the shard list (resampled=false): with shards >= streams each shard is one stream's."""
    values = dict(train_shards=str(corpus), resampled=False, shuffle_buffer=4, shuffle_initial=2) | kw
    return DataConfig(**values)


def stream_of(key: str, streams: int) -> int:
    """The logical stream that reads `key`'s shard (stream.py: stream l owns shards l, l + L, ...)."""
    return int(key.split("_")[0]) % streams


def by_stream(keys, streams: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {s: [] for s in range(streams)}
    for key in keys:
        out[stream_of(key, streams)].append(key)
    return out


def stream_keys(cfg: DataConfig, stream: int, streams: int, n: int) -> list[str]:
    """The first n keys logical stream `stream` of `streams` yields, read on its own (seed 0)."""
    sources = resolve_sources(cfg, HttpPolicy())
    decoder = SampleDecoder(PilTransform(open_clip.image_transform(32, is_train=False)), "jpg", "txt")
    start = {"sample": 0, "sources": [(0, 0)] * len(sources)}
    reader = SampleStream(
        sources,
        decoder,
        cfg,
        seed=0,
        stream=stream,
        num_streams=streams,
        policy=HttpPolicy(),
        name="reference",
        start=start,
    )
    return [key for _, _, key in itertools.islice(reader, n)]


def assert_streams_continue(seen: list[str], cfg: DataConfig, streams: int, corpus_keys: set[str]) -> None:
    """Per logical stream the keys seen are what that stream yields on its own, in order; the first
    pass (each stream's first epoch) is the corpus exactly once."""
    first_pass = []
    epoch = {s: sum(1 for k in corpus_keys if stream_of(k, streams) == s) for s in range(streams)}
    for s, keys in by_stream(seen, streams).items():
        assert keys == stream_keys(cfg, s, streams, len(keys)), f"logical stream {s}"
        assert len(keys) >= epoch[s], f"logical stream {s} did not finish its first pass"
        first_pass += keys[: epoch[s]]
    assert sorted(first_pass) == sorted(corpus_keys)
