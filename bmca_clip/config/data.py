"""The `data` group (conf/data/<name>.yaml): where training shards come from and how they are streamed."""

from __future__ import annotations

from dataclasses import dataclass, field

from bmca_clip.config.checks import check, one_of
from bmca_clip.data.filters import BalanceConfig, FilterConfig
from bmca_clip.data.mixing import MIXINGS

SOURCE_FORMATS = ("webdataset", "parquet", "csv")


@dataclass
class SourceConfig:
    """One place samples come from: a hub dataset repo (optionally one folder of it), or explicit files."""

    repo_id: str | None = None  # hub dataset repo, e.g. BIOMEDICA/biomedica_webdataset_24M
    revision: str = "main"  # branch, tag or commit; resolved to a commit once and recorded in the manifest
    subset: str | None = None  # folder inside the repo (commercial; a parquet config's folder); null = all
    pattern: str | None = None  # brace pattern inside the repo, used when listing the repo is impossible
    shards: str | None = None  # instead of a repo: a folder, file, brace pattern or URL; csv: the table file
    weight: float = 1.0  # data.mixing=weights: share of the samples drawn; natural: raw pair count; 0 = off
    format: str = "webdataset"  # webdataset (tar shards), parquet (image bytes + caption columns) or csv/tsv
    split: str | None = None  # parquet: only files of this split (train-*.parquet, train/...); null = all
    image_column: str = "image"  # parquet: image bytes or {bytes, path} struct; csv: image path (from table)
    caption_column: str = "caption"  # parquet and csv: the caption column
    separator: str | None = None  # csv: the column separator; null = a tab for .tsv/.tab files, else a comma
    use_filters: bool = True  # false: data.filter and data.balance pass this source's samples untouched
    # shards kept out of training and scored by val.*: globs of shard file names (a '/' matches the path's
    # tail), braces and '::' as in train_shards, e.g. "{000000,000931}.tar"; null = none held out
    holdout: str | None = None

    def __post_init__(self):
        check(self.weight >= 0, "data.sources.<name>.weight", self.weight, "a float >= 0")
        one_of("data.sources.<name>.format", self.format, SOURCE_FORMATS)
        check(
            not (self.format == "csv" and self.repo_id),
            "data.sources.<name>.repo_id",
            self.repo_id,
            "null for format=csv (set shards to the table's path)",
        )
        check(
            (self.repo_id is None) != (self.shards is None),
            "data.sources.<name>",
            self.repo_id or self.shards,
            "exactly one of repo_id or shards",
        )


@dataclass
class DataConfig:
    # Tar shards: a folder, a file, a brace pattern or URL ('::' joins several); shorthand for one source.
    train_shards: str | None = None
    sources: dict[str, SourceConfig] = field(default_factory=dict)  # named sources, mixed by weight
    holdout: str | None = (
        None  # data.train_shards' shards kept for validation, as data.sources.<name>.holdout
    )
    filter: FilterConfig = field(default_factory=FilterConfig)  # which samples to keep, by metadata
    balance: BalanceConfig = field(default_factory=BalanceConfig)  # per-concept sampling weights
    # What sources.<name>.weight means: weights = each source's share of the samples drawn (after filters);
    # natural = its raw pair count, drawn in proportion to count x kept fraction (bmca_clip/data/mixing.py).
    mixing: str = "weights"
    mixing_prior_samples: int = (
        100  # natural: each kept-fraction estimate starts at 1.0, worth this many pairs
    )
    resampled: bool = True  # draw shards with replacement (no epochs); false = epochs over the shard list
    shuffle_buffer: int = 2000  # samples held in the shuffle buffer of each stream (refilled per shard)
    shuffle_initial: int = 500  # samples buffered before the first one is yielded
    # Shards of each source a stream reads at once, round robin (BIOMEDICA's shards are k-means cluster
    # ordered); each gets shuffle_buffer/N and shuffle_initial/N, so memory stays the same; a resume re-reads
    # up to N shards per source, N HTTP streams each. 8: on a cluster-ordered corpus 1.9-2.5x the clusters per
    # batch of 1 and +32 points zero-shot after 120 steps (4: +19; 2 seeds, docs/benchmarks.md). 1 = the
    # stream before the key; a checkpoint from before it goes on with N, no sample of its pass lost or
    # repeated.
    shards_in_flight: int = 8
    num_workers: int = 2  # dataloader worker processes per rank (0 = read in the main process)
    # logical streams over all ranks and workers (a resume keeps the checkpoint's); 0 = ranks x workers
    streams: int = 0
    image_key: str = "jpg"  # tar member extension of the image
    caption_key: str = "txt"  # tar member extension of the caption
    max_bad_fraction: float = 0.5  # stop with an error if more than this share of samples fails to decode
    max_bad_after: int = 500  # each data stream applies max_bad_fraction once it has read this many samples
    # where hub shard listings (manifests) and, with cache_limit_gb, downloaded shards are kept; null =
    # $BMCA_CACHE or ~/.cache/bmca_clip; not model.cache_dir (weights) nor eval.py's cache_dir (embeddings)
    cache_dir: str | None = None
    cache_limit_gb: float = 0.0  # shards kept in data.cache_dir for repeated epochs; 0 = stream, never store
    retries: int = 5  # tries per HTTP request before a shard counts as failed
    timeout_s: float = 60.0  # a transfer that delivers nothing for this long is retried
    retry_backoff_s: float = 1.0  # first retry delay; doubles per try with jitter (a longer Retry-After wins)
    max_empty_shards: int = 20  # a source whose shards give no sample this many times in a row stops training

    def __post_init__(self):
        check(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "an integer >= 1")
        check(self.shards_in_flight >= 1, "data.shards_in_flight", self.shards_in_flight, "an integer >= 1")
        check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")
        check(self.streams >= 0, "data.streams", self.streams, "an integer >= 0 (0 = ranks x workers)")
        check(0 < self.max_bad_fraction <= 1, "data.max_bad_fraction", self.max_bad_fraction, "in (0, 1]")
        check(self.max_bad_after >= 1, "data.max_bad_after", self.max_bad_after, "an integer >= 1")
        # Neither set is caught where data is built (a default-constructed schema must pass); both is a mistake.
        check(
            not (self.train_shards and self.sources),
            "data.train_shards",
            self.train_shards,
            "null when data.sources is set (one or the other)",
        )
        check(
            not (self.holdout and self.sources),
            "data.holdout",
            self.holdout,
            "null when data.sources is set (use data.sources.<name>.holdout)",
        )
        check(self.retries >= 1, "data.retries", self.retries, "an integer >= 1")
        # Both pass the types but cannot work: urllib takes a timeout of 0 as non-blocking (every read fails
        # at once), and max_empty_shards=0 stops the run after its first shard, however good.
        check(self.timeout_s > 0, "data.timeout_s", self.timeout_s, "seconds > 0")
        check(self.retry_backoff_s >= 0, "data.retry_backoff_s", self.retry_backoff_s, "seconds >= 0")
        check(self.max_empty_shards >= 1, "data.max_empty_shards", self.max_empty_shards, "an integer >= 1")
        one_of("data.mixing", self.mixing, MIXINGS)
        check(self.mixing_prior_samples >= 1, "data.mixing_prior_samples", self.mixing_prior_samples, ">= 1")
