"""Shards on the Hugging Face hub: which shards a source has, at which commit.

Discovery lists a dataset repo once through huggingface_hub (one paginated API call per source, never
one per shard: many ranks doing per-shard calls get HTTP 429) at a revision resolved to its commit, and
caches the listing as a manifest with a content hash. URLs name that commit, so the data cannot change
under a running job. When listing fails, a cached manifest or the source's brace pattern stands in.
Reading the shards is http.py's (retries, resumes) and shards.py's (local files, the shard cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import braceexpand
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from bmca_clip.config import SourceConfig
from bmca_clip.data.http import PERMANENT_STATUS, HttpPolicy, retry_after_s
from bmca_clip.errors import HubError
from bmca_clip.io import atomic_write

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
_DEFAULT_POLICY = HttpPolicy()


@dataclass
class Manifest:
    """The shards of one source at one commit."""

    repo_id: str
    revision: str  # as asked for (branch, tag or commit)
    commit: str  # what it resolved to
    subset: str | None
    files: list[tuple[str, int | None]]  # (path in repo, size in bytes or None when unknown)
    content_hash: str
    version: int = MANIFEST_VERSION

    def urls(self) -> list[str]:
        return [
            hf_hub_url(self.repo_id, path, repo_type="dataset", revision=self.commit)
            for path, _ in self.files
        ]


def _hash_files(files) -> str:
    return hashlib.sha256(json.dumps(sorted(files)).encode()).hexdigest()


def _suffix(source: SourceConfig) -> str:
    """The files a source reads: .tar shards, or a hub dataset's .parquet files."""
    return ".parquet" if source.format == "parquet" else ".tar"


def in_split(path: str, split: str | None) -> bool:
    """Is `path` one of `split`'s files, as the hub's dataset viewer names them: a folder named after the
    split (`default/train/0000.parquet`) or a file name with it as a word (`data/train-00000-of-00004.parquet`,
    `pmc_oa_train.parquet`)? No split: every file."""
    if split is None:
        return True
    *folders, name = path.split("/")
    stem = name.rsplit(".", 1)[0]
    return split in folders or re.search(rf"(^|[-_.]){re.escape(split)}($|[-_.])", stem) is not None


def _manifest_file(cache: Path, source: SourceConfig) -> Path:
    name = (
        f"{source.repo_id.replace('/', '--')}@{source.revision.replace('/', '--')}@{source.subset or 'all'}"
    )
    if source.format == "parquet":  # another listing of the same repo: another manifest
        name += f"@parquet@{source.split or 'all'}"
    return cache / "manifests" / f"{name}.json"


def _load_manifest(path: Path) -> Manifest | None:
    try:
        data = json.loads(path.read_text())
        manifest = Manifest(**{**data, "files": [tuple(f) for f in data["files"]]})
    except (OSError, ValueError, TypeError):
        return None
    if manifest.version != MANIFEST_VERSION or manifest.content_hash != _hash_files(manifest.files):
        log.warning("ignoring damaged manifest %s", path)
        return None
    return manifest


def _save_manifest(path: Path, manifest: Manifest) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(asdict(manifest), indent=1))


def _list_repo(source: SourceConfig, policy: HttpPolicy) -> Manifest:
    api = HfApi()
    rng = random.Random()
    for attempt in range(policy.retries):
        try:
            commit = api.repo_info(source.repo_id, repo_type="dataset", revision=source.revision).sha
            entries = api.list_repo_tree(
                source.repo_id,
                path_in_repo=source.subset,
                recursive=True,
                repo_type="dataset",
                revision=commit,
            )
            files = sorted(
                (e.path, e.size)
                for e in entries
                if isinstance(e, RepoFile)
                and e.path.endswith(_suffix(source))
                and (source.format != "parquet" or in_split(e.path, source.split))
            )
            break
        except (RepositoryNotFoundError, GatedRepoError):
            raise
        except (
            Exception
        ) as err:  # HTTP errors, and the transport errors of whatever client huggingface_hub uses
            response = getattr(err, "response", None)
            status = getattr(response, "status_code", None)
            if status in PERMANENT_STATUS or attempt == policy.retries - 1:
                raise
            retry_after = response.headers.get("Retry-After") if response is not None else None
            time.sleep(policy.delay(attempt, retry_after_s(retry_after), rng))
    if not files:
        split = f" of split {source.split!r}" if source.format == "parquet" and source.split else ""
        raise HubError(
            f"{source.repo_id}@{source.revision}: no {_suffix(source)} files{split} under "
            f"{source.subset or 'the repo root'!r}; check the repo, subset and format"
            + (" and split" if split else "")
        )
    return Manifest(source.repo_id, source.revision, commit, source.subset, files, _hash_files(files))


def _pattern_manifest(source: SourceConfig) -> Manifest:
    files = [(path, None) for path in braceexpand.braceexpand(source.pattern)]
    return Manifest(
        source.repo_id, source.revision, source.revision, source.subset, files, _hash_files(files)
    )


def discover(source: SourceConfig, cache_dir: Path, policy: HttpPolicy = _DEFAULT_POLICY) -> Manifest:
    """The shards of a hub source: listed (and cached), else the cached listing, else its brace pattern."""
    path = _manifest_file(cache_dir, source)
    try:
        manifest = _list_repo(source, policy)
        _save_manifest(path, manifest)
        return manifest
    except GatedRepoError as err:
        raise HubError(
            f"{source.repo_id} is gated: accept its licence on the hub page, then set HF_TOKEN or run "
            f"`hf auth login` ({type(err).__name__})"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{source.repo_id}@{source.revision}: no such dataset repo or revision (or no access)"
        ) from None
    except HubError as err:  # listed, and nothing to read: tar sources fall back to their brace pattern
        if source.format == "parquet":  # a parquet repo has no pattern: a fallback would only hide it
            raise
        reason = f"HubError: {err}"
    except Exception as err:  # listing failed for good: fall back below, saying why
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if (cached := _load_manifest(path)) is not None:
        log.warning(
            "listing %s failed (%s); using the cached manifest of commit %s",
            source.repo_id,
            reason,
            cached.commit,
        )
        return cached
    if source.pattern:
        log.warning(
            "listing %s failed (%s); using the brace pattern %s", source.repo_id, reason, source.pattern
        )
        return _pattern_manifest(source)
    raise HubError(
        f"could not list {source.repo_id}@{source.revision} ({reason}) and there is no cached manifest or "
        "pattern: check the network and HF_ENDPOINT, or set data.sources.<name>.pattern"
    )
