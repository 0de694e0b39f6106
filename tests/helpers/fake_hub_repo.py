"""The repo the fake hub's own tests serve (tests/integration/fake_hub/): a few tar shards and text files
at the BIOMEDICA repo id, served on a FakeHub with huggingface_hub pointed at it (serve), and a plain HTTP
GET (http_get) for seeing the server as a client without huggingface_hub would."""

from __future__ import annotations

import contextlib
import io
import random
import tarfile
from pathlib import Path
from typing import NamedTuple

import httpx
from huggingface_hub import hf_hub_url

from tests.helpers.hub import FakeHub

DATASET = "BIOMEDICA/biomedica_webdataset_24M"
SHARD = "commercial/000000.tar"
FILES = [
    "README.md",
    "commercial/000000.tar",
    "commercial/000001.tar",
    "meta/stats.json",
    "noncommercial/000000.tar",
]


class Served(NamedTuple):
    hub: FakeHub
    sha: str
    folder: Path

    def data(self, path: str) -> bytes:
        return (self.folder / path).read_bytes()

    def url(self, path: str = SHARD, revision: str = "main") -> str:
        return hf_hub_url(DATASET, path, repo_type="dataset", revision=revision)


def _tar(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with tarfile.open(path, "w") as tar:
        for i in range(3):
            payload = rng.randbytes(40_000)
            member = tarfile.TarInfo(f"sample{i:04d}.jpg")
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))


def write_repo(folder: Path) -> Path:
    """FILES under `folder`: the tars hold random payloads (seeded), the rest one line of text."""
    for i, rel in enumerate(FILES):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".tar"):
            _tar(folder / rel, seed=i)
        else:
            (folder / rel).write_text(f"{rel}: small text file\n")
    return folder


@contextlib.contextmanager
def serve(tmp_path: Path, **hub_kw):
    """A FakeHub(**hub_kw) serving write_repo's files at DATASET, huggingface_hub pointed at it."""
    folder = write_repo(tmp_path / "repo")
    with FakeHub(**hub_kw) as hub:
        sha = hub.add_dataset(DATASET, folder)
        with hub.use():
            yield Served(hub, sha, folder)


def http_get(url: str, timeout: float = 5.0, **headers) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=timeout)
