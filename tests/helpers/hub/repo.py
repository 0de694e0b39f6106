"""A served dataset repo at one revision: its files with the oids the hub reports, listings and repo info."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

CHUNK = 256 * 1024
# Suffixes the hub keeps as plain git blobs; everything else (tars, parquet, images) is LFS, as on BIOMEDICA.
GIT_SUFFIXES = frozenset({".md", ".json", ".jsonl", ".txt", ".yaml", ".yml", ".py", ".csv", ".gitattributes"})
COMMIT_DATE = "2024-06-01T00:00:00.000Z"  # fixed so that repo info is reproducible


@dataclasses.dataclass(frozen=True)
class File:
    path: str
    source: Path
    size: int
    git_oid: str  # what the hub reports as `oid`: the git blob sha1 (of the LFS pointer for LFS files)
    sha256: str | None  # set for LFS files: their ETag and `lfs.oid`

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_oid

    def lfs(self) -> dict | None:
        return None if self.sha256 is None else {"oid": self.sha256, "size": self.size, "pointerSize": 134}


@dataclasses.dataclass(frozen=True)
class Snapshot:
    repo_id: str
    revision: str
    commit: str
    files: dict[str, File]

    def dirs(self) -> set[str]:
        return {p.rsplit("/", i)[0] for p in self.files for i in range(1, p.count("/") + 1)}

    def entry(self, path: str, expand: bool) -> dict:
        """One tree / paths-info entry, with the field names hf_api.RepoFile and RepoFolder read."""
        file = self.files.get(path)
        if file is None:
            out = {"type": "directory", "oid": sha1(f"tree {self.commit} {path}".encode()), "size": 0}
        else:
            out = {"type": "file", "oid": file.git_oid, "size": file.size}
            if file.lfs():
                out["lfs"] = file.lfs()
            if expand:
                scan = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None}}
                out["securityFileStatus"] = scan | {"pickleImportScan": None}
        out["path"] = path
        if expand:
            out["lastCommit"] = {"id": self.commit, "title": "Upload shards", "date": COMMIT_DATE}
        return out

    def tree(self, prefix: str, recursive: bool) -> list[str] | None:
        """Paths under `prefix` (direct children unless recursive); None if `prefix` is not a folder."""
        if prefix and prefix not in self.dirs():
            return None
        base = f"{prefix}/" if prefix else ""
        paths = [p for p in sorted(self.dirs() | set(self.files)) if p.startswith(base)]
        return paths if recursive else [p for p in paths if "/" not in p[len(base) :]]

    def info(self, blobs: bool, gated: str | bool) -> dict:
        """Repo info as /api/datasets/{repo} returns it: the fields hf_api.DatasetInfo reads."""
        siblings = []
        for file in self.files.values():
            sibling = {"rfilename": file.path}
            if blobs:  # `files_metadata=True` sends blobs=true
                sibling |= {"size": file.size, "blobId": file.git_oid}
                if file.sha256:
                    sibling["lfs"] = {"sha256": file.sha256, "size": file.size, "pointerSize": 134}
            siblings.append(sibling)
        return {
            "_id": sha1(self.repo_id.encode())[:24],
            "id": self.repo_id,
            "author": self.repo_id.split("/")[0] if "/" in self.repo_id else None,
            "sha": self.commit,
            "lastModified": COMMIT_DATE,
            "createdAt": COMMIT_DATE,
            "private": False,
            "gated": gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in self.files.values()),
        }


class HubError(Exception):
    """An HTTP error response, shaped like the hub's: JSON `{"error": ...}` plus X-Error-* headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def scan_file(source: Path, rel: str) -> File:
    """Hash one file in chunks (shards can be tens of MB) into the oids the hub would report."""
    size = source.stat().st_size
    blob, sha256 = hashlib.sha1(b"blob %d\0" % size), hashlib.sha256()
    with source.open("rb") as f:
        while chunk := f.read(CHUNK):
            blob.update(chunk)
            sha256.update(chunk)
    if Path(rel).suffix in GIT_SUFFIXES or rel == ".gitattributes":
        return File(rel, source, size, blob.hexdigest(), None)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256.hexdigest()}\nsize {size}\n"
    pointer_oid = sha1(b"blob %d\0%s" % (len(pointer), pointer.encode()))
    return File(rel, source, size, pointer_oid, sha256.hexdigest())


def scan_folder(folder: Path) -> dict[str, File]:
    files = {}
    for source in sorted(folder.rglob("*")):
        rel = source.relative_to(folder).as_posix()
        if source.is_file() and ".git" not in rel.split("/"):
            files[rel] = scan_file(source, rel)
    return files
