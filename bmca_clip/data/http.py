"""HTTP(S) for the data: the retry policy, and `ShardReader`, a stream of one shard that survives the network.

Transient failures (429, 5xx, resets, stalls) are retried with exponential backoff and jitter, honouring
Retry-After, and an interrupted body resumes with a Range request where it stopped; permanent ones (404, an
HTML page instead of a tar) raise ShardError at once. Written with urllib rather than huggingface_hub's
download helpers, which fetch whole files to disk and cannot resume a body mid-stream into a tar reader.
Credentials come from auth.py (the HF token only to the hub itself, a URL's `user:password@` as Basic
auth); messages and log lines show URLs through bmca_clip.redact.
"""

from __future__ import annotations

import http.client
import io
import logging
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from bmca_clip.data.auth import auth_headers, split_userinfo
from bmca_clip.errors import ShardError
from bmca_clip.redact import redact_url

log = logging.getLogger(__name__)

PERMANENT_STATUS = {401, 403, 404, 410, 416}


@dataclass(frozen=True)
class HttpPolicy:
    retries: int = 5  # tries per request
    timeout_s: float = 60.0  # a read that delivers nothing for this long counts as a stall
    backoff_s: float = 1.0  # first retry delay; doubles per try, with jitter, capped at max_backoff_s
    max_backoff_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + rng.random())
        return max(backoff, retry_after or 0.0)


def retry_after_s(value: str | None) -> float | None:
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
        self._headers = auth_headers(url)
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
                time.sleep(
                    self.policy.delay(attempt, retry_after_s(err.headers.get("Retry-After")), self._rng)
                )
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


class RangeReader(ShardReader):
    """A seekable ShardReader, for files read out of order (a parquet file: footer first, then its row
    groups): a seek past the open response's position reopens with a Range request, except a short jump
    forward, which reads through. The size comes from the first response (Content-Length / Content-Range)."""

    SKIP_BYTES = 1 << 16  # jumps forward up to this far read through rather than cost a request

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def size(self) -> int:
        if self.length is None:
            if self._resp is None:
                self._open()
            if self.length is None:
                raise ShardError(self.url, "no_length", "the server sent no Content-Length")
        return self.length

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: None}[whence]
        target = (self.size() if target is None else target) + offset
        gap = target - self.pos
        if self._resp is not None and 0 < gap <= self.SKIP_BYTES:
            scratch = bytearray(gap)
            while gap > 0 and (n := self.readinto(memoryview(scratch)[:gap])):
                gap -= n
        elif gap:
            self._drop()
            self.pos = target
        return self.pos

    def readinto(self, buffer) -> int:
        if self.length is not None and self.pos >= self.length:
            return 0  # a Range request at the end would be answered 416
        return super().readinto(buffer)

    def _accept(self, resp) -> None:
        super()._accept(resp)
        total = (resp.headers.get("Content-Range") or "").rpartition("/")[2]
        if resp.status == 206 and total.isdigit():  # the file's size, whatever this part's length says
            self.length = int(total)
