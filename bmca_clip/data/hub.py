"""Shards on the Hugging Face hub: discovery, URLs, authentication and a reader that survives the network.

Discovery lists a dataset repo once through huggingface_hub (one paginated API call per source, never
one per shard: many ranks doing per-shard calls get HTTP 429) at a revision resolved to its commit, and
caches the listing as a manifest with a content hash. URLs name that commit, so the data cannot change
under a running job. When listing fails, a cached manifest or the source's brace pattern stands in.

`ShardReader` streams one shard over HTTP(S): transient failures (429, 5xx, resets, stalls) are retried
with exponential backoff and jitter, honouring Retry-After, and an interrupted body resumes with a Range
request where it stopped; permanent ones (404, an HTML page instead of a tar) raise ShardError at once.
The token comes from huggingface_hub (HF_TOKEN or the login cache) and only ever travels in the
Authorization header of requests to the hub itself: the URL's scheme, host and port equal HF_ENDPOINT's
(default ports normalised) and its path lies under the endpoint's path (never to a look-alike host, a
redirect target, or into a message). A URL with its own `user:password@` is sent with that as Basic auth
instead (urllib sends none by itself), the userinfo stripped from the URL requested; messages and log
lines show URLs through bmca_clip.redact.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import braceexpand
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from bmca_clip.config import SourceConfig
from bmca_clip.data.auth import auth_headers as _auth_headers
from bmca_clip.data.auth import split_userinfo
from bmca_clip.errors import HubError, ShardError
from bmca_clip.io import atomic_write
from bmca_clip.redact import redact_url

log = logging.getLogger(__name__)

PERMANENT_STATUS = {401, 403, 404, 410, 416}
MANIFEST_VERSION = 1


def default_cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("BMCA_CACHE", "~/.cache/bmca_clip")).expanduser()


@dataclass(frozen=True)
class HttpPolicy:
    retries: int = 5  # tries per request
    timeout_s: float = 60.0  # a read that delivers nothing for this long counts as a stall
    backoff_s: float = 1.0  # first retry delay; doubles per try, with jitter, capped at max_backoff_s
    max_backoff_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + rng.random())
        return max(backoff, retry_after or 0.0)


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


def _manifest_file(cache: Path, source: SourceConfig) -> Path:
    name = f"{source.repo_id.replace('/', '--')}@{source.revision.replace('/', '--')}@{source.subset or 'all'}.json"
    return cache / "manifests" / name


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
                (e.path, e.size) for e in entries if isinstance(e, RepoFile) and e.path.endswith(".tar")
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
            time.sleep(policy.delay(attempt, _seconds(retry_after), rng))
    if not files:
        raise HubError(
            f"{source.repo_id}@{source.revision}: no .tar shards under {source.subset or 'the repo root'!r}"
        )
    return Manifest(source.repo_id, source.revision, commit, source.subset, files, _hash_files(files))


def _pattern_manifest(source: SourceConfig) -> Manifest:
    files = [(path, None) for path in braceexpand.braceexpand(source.pattern)]
    return Manifest(
        source.repo_id, source.revision, source.revision, source.subset, files, _hash_files(files)
    )


def discover(source: SourceConfig, cache_dir: Path, policy: HttpPolicy = HttpPolicy()) -> Manifest:
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


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date Retry-After: fall back to our own backoff


class ShardReader(io.RawIOBase):
    """A read-only stream of one shard over HTTP(S) that retries and resumes; counts into `stats`."""

    def __init__(self, url: str, policy: HttpPolicy, stats: dict[str, int]):
        super().__init__()
        self.url, self.policy, self.stats = url, policy, stats
        self.pos, self.length, self._resp = 0, None, None
        self._request_url, basic = split_userinfo(url)
        self._headers = _auth_headers(url)
        self._hint = "the user and password in the URL" if basic else "the revision or your HF token"
        self._rng = random.Random()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        for attempt in range(self.policy.retries):
            try:
                if self._resp is None:
                    self._open()
                n = self._resp.readinto(buffer)
                if n == 0 and self.length is not None and self.pos < self.length:
                    raise http.client.IncompleteRead(b"", self.length - self.pos)
                self.pos += n
                return n
            except (TimeoutError, ConnectionError, http.client.HTTPException, urllib.error.URLError) as err:
                self._drop()
                self._count("retries")
                log.debug("%s: %s at byte %d, retrying", redact_url(self.url), type(err).__name__, self.pos)
                time.sleep(self.policy.delay(attempt, None, self._rng))
        raise ShardError(
            self.url, "network", f"the connection kept failing after {self.policy.retries} tries"
        )

    def _open(self) -> None:
        for attempt in range(self.policy.retries):
            request = urllib.request.Request(
                self._request_url, headers={"User-Agent": self._headers.get("user-agent", "")}
            )
            if "authorization" in self._headers:
                request.add_unredirected_header("Authorization", self._headers["authorization"])
            if self.pos:
                request.add_header("Range", f"bytes={self.pos}-")
            try:
                resp = urllib.request.urlopen(request, timeout=self.policy.timeout_s)
            except urllib.error.HTTPError as err:
                if err.code in PERMANENT_STATUS:
                    raise ShardError(
                        self.url, f"http_{err.code}", f"HTTP {err.code}; check {self._hint}"
                    ) from None
                self._count("retries")
                time.sleep(self.policy.delay(attempt, _seconds(err.headers.get("Retry-After")), self._rng))
                continue
            except (TimeoutError, ConnectionError, http.client.HTTPException, urllib.error.URLError):
                self._count("retries")
                time.sleep(self.policy.delay(attempt, None, self._rng))
                continue
            self._accept(resp)
            return
        raise ShardError(self.url, "http_retries", f"no answer after {self.policy.retries} tries")

    def _accept(self, resp) -> None:
        if "text/html" in (resp.headers.get("Content-Type") or ""):
            resp.close()
            raise ShardError(self.url, "not_a_tar", "the server sent an HTML page, not a tar")
        if self.pos and resp.status != 206:  # the server ignored our Range: skip what we already have
            _discard(resp, self.pos)
        size = resp.headers.get("Content-Length")
        self.length = (
            self.pos + int(size)
            if size is not None and resp.status == 206
            else (int(size) if size is not None else None)
        )
        self._resp = resp

    def _drop(self) -> None:
        if self._resp is not None:
            try:
                self._resp.close()
            except OSError:
                pass
            self._resp = None

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    def close(self) -> None:
        self._drop()
        super().close()


def _discard(resp, n: int) -> None:
    while n > 0:
        chunk = resp.read(min(n, 1 << 20))
        if not chunk:
            raise http.client.IncompleteRead(b"", n)
        n -= len(chunk)


class ShardCache:
    """Optional local copies of streamed shards, for repeated epochs, kept under a size limit.

    A shard is copied while it streams (to a temporary file, renamed once complete), so caching costs no
    extra download; the least recently used copies are deleted when the total passes `limit_bytes`.
    """

    def __init__(self, folder: Path, limit_bytes: int):
        self.folder, self.limit = Path(folder) / "shards", limit_bytes

    def path(self, url: str) -> Path:
        return self.folder / f"{hashlib.sha1(url.encode()).hexdigest()}.tar"

    def get(self, url: str) -> Path | None:
        path = self.path(url)
        if path.exists():
            os.utime(path)  # marks it recently used
            return path
        return None

    def tee(self, url: str, stream) -> io.RawIOBase:
        self.folder.mkdir(parents=True, exist_ok=True)
        return _Tee(stream, self.path(url), self)

    def evict(self) -> None:
        files = sorted(self.folder.glob("*.tar"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.limit:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)


class _Tee(io.RawIOBase):
    """Reads through `inner`, writing a copy that becomes the cached shard only if read to the end."""

    def __init__(self, inner, final: Path, cache: ShardCache):
        super().__init__()
        self.inner, self.final, self.cache = inner, final, cache
        self.tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        self.copy = open(self.tmp, "wb")
        self.complete = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.inner.readinto(buffer)
        if n:
            self.copy.write(memoryview(buffer)[:n])
        else:
            self.complete = True
        return n

    def close(self) -> None:
        if self.closed:
            return
        # tarfile stops at the end-of-archive blocks and may leave a little padding unread: finish it.
        left = (self.inner.length - self.inner.pos) if self.inner.length is not None else None
        if not self.complete and left is not None and left <= 1 << 16:
            while self.readinto(bytearray(1 << 16)):
                pass
        self.inner.close()
        self.copy.close()
        if self.complete:
            os.replace(self.tmp, self.final)
            self.cache.evict()
        else:  # a shard abandoned midway is not a shard: never cache a prefix
            self.tmp.unlink(missing_ok=True)
        super().close()


def open_shard(url: str, policy: HttpPolicy, stats: dict[str, int], cache: ShardCache | None = None):
    """A buffered binary stream of a shard: a local file, an HTTP(S) URL through ShardReader (and the
    local cache, when one is given), or any other URL webdataset can open (pipe:, s3:, ...)."""
    if url.startswith(("http://", "https://")):
        if cache is not None and (cached := cache.get(url)) is not None:
            _count_into(stats, "shards_from_cache")
            return open(cached, "rb")
        raw = ShardReader(url, policy, stats)
        return io.BufferedReader(cache.tee(url, raw) if cache is not None else raw, buffer_size=1 << 20)
    if url.startswith("pipe:") or ("://" in url and not url.startswith("file://")):
        import webdataset.gopen

        return webdataset.gopen.gopen(url)
    path = url[len("file://") :] if url.startswith("file://") else url
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ShardError(url, "missing", "no such file") from None


def _count_into(stats: dict[str, int], name: str) -> None:
    stats[name] = stats.get(name, 0) + 1
