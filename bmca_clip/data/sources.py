"""Where the training shards come from: named sources (hub repos or local/URL shards), each with its shard
URLs, sampling probability and, for a hub source, the commit its URLs name (checked again on resume)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from bmca_clip.config import DataConfig
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.hub import discover
from bmca_clip.data.mixing import source_probabilities
from bmca_clip.data.shards import default_cache_dir
from bmca_clip.errors import DataError, HubError, SourceCommitMoved

log = logging.getLogger(__name__)


def expand_shards(spec: str) -> list[str]:
    """Shard URLs from 'a/{000..009}.tar', a folder (its *.tar, recursively), a file or URL; '::' joins."""
    urls: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split("::"))):
        for item in braceexpand.braceexpand(part):
            path = Path(item)
            if "://" in item:
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


@dataclass
class Source:
    name: str
    urls: list[str]
    probability: float
    commit: str | None = None  # the hub commit the URLs name; None for local shards


def resolve_sources(cfg: DataConfig, policy: HttpPolicy) -> list[Source]:
    """The sources to read, with their shard URLs and sampling probabilities (hub repos listed here)."""
    if cfg.train_shards:
        return [Source("shards", expand_shards(cfg.train_shards), 1.0)]
    if not cfg.sources:
        raise DataError("no training data: set data.train_shards, or pick a preset such as data=biomedica")
    probs = source_probabilities({name: src.weight for name, src in cfg.sources.items()})
    sources = []
    for name, src in cfg.sources.items():
        if probs[name] == 0:
            continue
        try:
            manifest = discover(src, default_cache_dir(cfg.cache_dir), policy) if src.repo_id else None
            urls = manifest.urls() if manifest else expand_shards(src.shards)
        except HubError as err:
            raise DataError(f"data.sources.{name}: {err}") from None
        sources.append(Source(name, urls, probs[name], manifest.commit if manifest else None))
        what = "share of pairs before filters" if cfg.mixing == "natural" else "sampling probability"
        log.info("source %s: %d shards, %s %.3f", name, len(urls), what, probs[name])
    return sources


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
