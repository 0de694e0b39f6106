"""Small tar shards with good and bad samples, and a deadline for streams that could spin forever.

Every test that could spin forever on a regression runs under `deadline` (SIGALRM, main thread only), so a
hang fails the test instead of the suite.
"""

from __future__ import annotations

import contextlib
import io
import signal
import struct
import zlib

import webdataset as wds
from PIL import Image


class Spinning(BaseException):
    """Not an Exception: no per-sample catch-all can swallow it (a TimeoutError is an OSError, which the
    decoder skips as a corrupt image, so the stream would go on spinning)."""


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail, instead of hanging, when the block runs longer than `seconds` (main thread only)."""

    def expired(signum, frame):
        raise Spinning(f"still running after {seconds} s: the stream spins instead of stopping")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def jpeg(shade: int = 200) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (shade, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A 1x1 PNG whose header claims width x height (> Pillow's 179 MP limit): a few dozen bytes."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def write_shard(path, samples: list[dict]) -> str:
    """Write `samples` to the tar at `path` under keys s00000, s00001, ...; returns the path as a string."""
    with wds.TarWriter(str(path)) as sink:
        for i, sample in enumerate(samples):
            sink.write({"__key__": f"s{i:05d}", **sample})
    return str(path)


GOOD = {"jpg": jpeg(), "txt": "a red square", "json": b"{}"}
