"""Where the training shards come from: named sources (hub repos or local/URL shards, tar or parquet; CSV
tables cut into chunks), each with its shard URLs, sampling probability, how to read a table-shaped one
(tables.py) and, for a hub source, the commit its URLs name (checked again on resume)."""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand

from bmca_clip.config import DataConfig
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.hub import discover, in_split
from bmca_clip.data.mixing import source_probabilities
from bmca_clip.data.shards import default_cache_dir
from bmca_clip.data.tables import TableSpec, index_table
from bmca_clip.errors import DataError, HubError, SourceCommitMoved

log = logging.getLogger(__name__)


def expand_shards(spec: str, suffix: str = ".tar") -> list[str]:
    """Shard URLs from 'a/{000..009}.tar', a folder (its *<suffix>, recursively), a file or URL; '::' joins."""
    urls: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split("::"))):
        for item in braceexpand.braceexpand(part):
            path = Path(item)
            if "://" in item:
                urls.append(item)
            elif path.is_dir():
                found = sorted(str(p) for p in path.rglob(f"*{suffix}"))
                if not found:
                    raise DataError(f"data.train_shards: folder {item} holds no {suffix} files")
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


@dataclass
class Source:
    name: str
    urls: list[str]
    probability: float
    commit: str | None = None  # the hub commit the URLs name; None for local shards
    table: TableSpec | None = None  # how to read a parquet or csv source; None for tar shards
    filtered: bool = True  # data.filter and data.balance apply (data.sources.<name>.use_filters)
    heldout: list[str] = field(default_factory=list)  # shards kept out of `urls` for validation (holdout)


def resolve_sources(cfg: DataConfig, policy: HttpPolicy) -> list[Source]:
    """The sources to read, with their shard URLs and sampling probabilities (hub repos listed here)."""
    if cfg.train_shards:
        urls, heldout = split_holdout("data.holdout", expand_shards(cfg.train_shards), cfg.holdout)
        return [Source("shards", urls, 1.0, heldout=heldout)]
    if not cfg.sources:
        raise DataError("no training data: set data.train_shards, or pick a preset such as data=biomedica")
    probs = source_probabilities({name: src.weight for name, src in cfg.sources.items()})
    sources = []
    for name, src in cfg.sources.items():
        if probs[name] == 0:
            continue
        table = _table_spec(name, src)
        try:
            manifest = discover(src, default_cache_dir(cfg.cache_dir), policy) if src.repo_id else None
            if manifest:
                urls = manifest.urls()
            elif src.format == "csv":
                urls = index_table(src.shards, table)
            else:
                urls = expand_shards(src.shards, ".parquet" if table else ".tar")
                if table:  # a local copy of a hub dataset: the same split rule as its listing
                    urls = [u for u in urls if in_split("/".join(u.split("/")[-2:]), src.split)]
        except HubError as err:
            raise DataError(f"data.sources.{name}: {err}") from None
        commit = manifest.commit if manifest else None
        urls, heldout = split_holdout(f"data.sources.{name}.holdout", urls, src.holdout)
        sources.append(Source(name, urls, probs[name], commit, table, src.use_filters, heldout))
        what = "share of pairs before filters" if cfg.mixing == "natural" else "sampling probability"
        unit = {"csv": "chunks", "parquet": "parquet files"}.get(src.format, "shards")
        held = f" (+{len(heldout)} held out for validation)" if heldout else ""
        log.info("source %s: %d %s%s, %s %.3f", name, len(urls), unit, held, what, probs[name])
    return sources


def split_holdout(key: str, urls: list[str], spec: str | None) -> tuple[list[str], list[str]]:
    """(training shards, held-out shards) of one source: a shard is held out when its file name matches
    one of the globs in `spec` ('::' joins several, braces expand; a glob with '/' matches that many
    trailing path parts). Refuses a glob that matches no shard, and holding out every shard."""
    if not spec:
        return urls, []
    globs = [g for part in spec.split("::") if part.strip() for g in braceexpand.braceexpand(part.strip())]
    held: set[str] = set()
    for glob in globs:
        hits = {url for url in urls if fnmatch.fnmatchcase(_tail(url, glob), glob)}
        if not hits:
            raise DataError(
                f"{key}={spec!r}: {glob!r} matches none of the source's {len(urls)} shards (such as "
                f"{_tail(urls[0], glob)!r}); name shard files, e.g. {_tail(urls[0], 'x')!r}"
            )
        held |= hits
    if len(held) == len(urls):
        raise DataError(
            f"{key}={spec!r} holds out all {len(urls)} shards of the source, leaving none to train on: "
            "hold out fewer shards (at least one must stay in training)"
        )
    return [u for u in urls if u not in held], [u for u in urls if u in held]


def _tail(url: str, glob: str) -> str:
    """The last path parts of a shard URL or path, as many as `glob` has."""
    return "/".join(url.rstrip("/").split("/")[-(glob.count("/") + 1) :])


def _table_spec(name: str, src) -> TableSpec | None:
    """How to read a parquet or csv source (a tab separates a .tsv/.tab table's columns unless set)."""
    if src.format == "webdataset":
        return None
    separator = src.separator
    if separator is None:
        separator = "\t" if str(src.shards or "").lower().endswith((".tsv", ".tab")) else ","
    return TableSpec(name, src.format, src.image_column, src.caption_column, separator)


def check_commits(saved: dict, sources: list[Source]) -> None:
    """Refuse to resume a stream whose hub source now resolves to another commit: the same shard numbers
    would name other data, and the resume would only look exact."""
    for source in sources:
        old = saved.get(source.name)
        if old is None or old == source.commit:  # local shards, or the same commit
            continue
        if not re.fullmatch(r"[0-9a-f]{40}", old):  # that run fell back to the brace pattern: unresolved
            log.warning(
                "data.sources.%s: the checkpoint read revision %r without resolving it to a commit, so "
                "whether this run's %s is the same data cannot be checked",
                source.name,
                old,
                source.commit,
            )
            continue
        raise SourceCommitMoved(
            f"data.sources.{source.name}: the checkpoint's data stream read commit {old}, this run "
            f"reads {source.commit}: pass resume_data=reset to start a fresh data stream on the new "
            f"commit, or data.sources.{source.name}.revision={old} to continue the old one"
        )
