"""Where a shard's bytes come from: a local file, the local shard cache, an HTTP(S) stream, or any URL
webdataset opens; `ShardCache` keeps copies of streamed shards under a size limit."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from bmca_clip.data.http import HttpPolicy, ShardReader
from bmca_clip.errors import ShardError


def default_cache_dir(cache_dir: str | None) -> Path:
    """The root of bmca_clip's data caches (listing manifests, shard copies): data.cache_dir, else
    $BMCA_CACHE, else ~/.cache/bmca_clip."""
    return Path(cache_dir or os.environ.get("BMCA_CACHE", "~/.cache/bmca_clip")).expanduser()


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
