"""The stand-in BIOMEDICA hub repo that the streaming and secrets tests serve on a FakeHub: its repo id, a
shard path, the test token, what a redacted secret reads as, tar shards whose keys name their shard
(write_repo), the data config that streams from it, and the header HTTP Basic auth sends."""

from __future__ import annotations

import base64
import io

import webdataset as wds
from PIL import Image

from bmca_clip.config import DataConfig, SourceConfig

TOKEN = "hf_TESTsecretTOKEN123"
REPO_ID = "BIOMEDICA/biomedica_webdataset_24M"
SHARD = "commercial/000000.tar"
MASK = "***"  # what a redacted secret reads as (bmca_clip.redact.MASK)


def _jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (shade, 80, 160)).save(buf, format="JPEG")
    return buf.getvalue()


def write_repo(folder, shards: dict[str, int]) -> dict[str, list[str]]:
    """Tar shards {relative path: n samples} with keys naming their shard; returns keys per shard."""
    keys = {}
    for rel, n in shards.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        stem = rel.replace("/", "_").removesuffix(".tar")
        keys[rel] = [f"{stem}_{i:03d}" for i in range(n)]
        with wds.TarWriter(str(path)) as sink:
            for i, key in enumerate(keys[rel]):
                sink.write({"__key__": key, "jpg": _jpeg(i % 255), "txt": f"caption {key}", "json": b"{}"})
    return keys


def stream_config(tmp_path, sources: dict[str, SourceConfig], **kw) -> DataConfig:
    """A data config streaming `sources` with small buffers, a cache under tmp_path and quick retries."""
    values = dict(
        num_workers=0,
        shuffle_buffer=8,
        shuffle_initial=4,
        resampled=False,
        cache_dir=str(tmp_path / "cache"),
        retries=4,
        timeout_s=1.0,
        retry_backoff_s=0.01,
    )
    values.update(kw)
    return DataConfig(sources=sources, **values)


def hub_source(subset="commercial", **kw) -> SourceConfig:
    return SourceConfig(repo_id=REPO_ID, subset=subset, **kw)


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
