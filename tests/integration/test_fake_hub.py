"""The fake hub is faithful enough: huggingface_hub 2.4 lists, resolves and downloads from it as from
huggingface.co, and each injected fault looks to a plain HTTP client like the network failure it stands for."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import tarfile
import time
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
from huggingface_hub import HfApi, constants, hf_api, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

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


def _write_repo(folder: Path) -> Path:
    for i, rel in enumerate(FILES):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".tar"):
            _tar(folder / rel, seed=i)
        else:
            (folder / rel).write_text(f"{rel}: small text file\n")
    return folder


@contextlib.contextmanager
def _serve(tmp_path: Path, **hub_kw):
    folder = _write_repo(tmp_path / "repo")
    with FakeHub(**hub_kw) as hub:
        sha = hub.add_dataset(DATASET, folder)
        with hub.use():
            yield Served(hub, sha, folder)


@pytest.fixture
def served(tmp_path):
    with _serve(tmp_path) as served:
        yield served


def _get(url: str, timeout: float = 5.0, **headers) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=timeout)


# --- the API huggingface_hub calls ---


def test_repo_info_by_branch_and_by_sha(served):
    info = HfApi().repo_info(DATASET, repo_type="dataset")
    assert info.sha == served.sha and len(served.sha) == 40
    assert sorted(s.rfilename for s in info.siblings) == FILES
    assert HfApi().repo_info(DATASET, repo_type="dataset", revision=served.sha).sha == served.sha
    detailed = HfApi().dataset_info(DATASET, files_metadata=True)
    sizes = {s.rfilename: s.size for s in detailed.siblings}
    assert sizes[SHARD] == len(served.data(SHARD))
    assert {s.rfilename for s in detailed.siblings if s.lfs} == {f for f in FILES if f.endswith(".tar")}


def test_listing_includes_nested_shards(served):
    api = HfApi()
    assert sorted(api.list_repo_files(DATASET, repo_type="dataset")) == FILES
    tree = list(api.list_repo_tree(DATASET, repo_type="dataset", recursive=True))
    files = {e.path: e for e in tree if isinstance(e, hf_api.RepoFile)}
    assert sorted(files) == FILES
    assert files[SHARD].size == len(served.data(SHARD))
    assert files[SHARD].lfs.sha256 == hashlib.sha256(served.data(SHARD)).hexdigest()
    assert {e.path for e in tree if isinstance(e, hf_api.RepoFolder)} == {
        "commercial",
        "meta",
        "noncommercial",
    }
    top = {e.path for e in api.list_repo_tree(DATASET, repo_type="dataset")}
    assert top == {"README.md", "commercial", "meta", "noncommercial"}
    sub = [
        e.path for e in api.list_repo_tree(DATASET, "commercial", repo_type="dataset", revision=served.sha)
    ]
    assert sub == ["commercial/000000.tar", "commercial/000001.tar"]


def test_tree_pagination_follows_link_header(tmp_path):
    with _serve(tmp_path, page_size=2) as served:
        assert sorted(HfApi().list_repo_files(DATASET, repo_type="dataset")) == FILES
        pages = [r for r in served.hub.requests if "/tree/" in r["path"]]
        # 5 files + 3 folders at 2 per page: 4 pages, each after the first asked for by its cursor
        assert len(pages) == 4
        assert [("cursor" in r["query"]) for r in pages] == [False, True, True, True]
        assert all(r["query"]["recursive"] == ["true"] for r in pages)


def test_paths_info_reports_sizes(served):
    infos = HfApi().get_paths_info(
        DATASET, [SHARD, "README.md", "commercial", "missing.tar"], repo_type="dataset"
    )
    by_path = {i.path: i for i in infos}
    assert set(by_path) == {SHARD, "README.md", "commercial"}
    assert by_path[SHARD].size == len(served.data(SHARD))
    assert by_path["README.md"].size == len(served.data("README.md")) and by_path["README.md"].lfs is None
    assert isinstance(by_path["commercial"], hf_api.RepoFolder)


def test_download_is_byte_identical(served, tmp_path):
    path = hf_hub_download(DATASET, SHARD, repo_type="dataset", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == served.data(SHARD)
    assert served.sha in path  # cached under the commit the server reported in X-Repo-Commit
    by_sha = hf_hub_download(DATASET, "meta/stats.json", repo_type="dataset", revision=served.sha)
    assert Path(by_sha).read_bytes() == served.data("meta/stats.json")


def test_revision_with_slashes_is_percent_encoded(served, tmp_path):
    sha = served.hub.add_dataset(DATASET, served.folder, revision="refs/convert/parquet")
    url = served.url(revision="refs/convert/parquet")
    assert f"/resolve/refs%2Fconvert%2Fparquet/{SHARD}" in url
    assert _get(url).content == served.data(SHARD)
    api = HfApi()
    assert sorted(api.list_repo_files(DATASET, repo_type="dataset", revision="refs/convert/parquet")) == FILES
    assert api.repo_info(DATASET, repo_type="dataset", revision="refs/convert/parquet").sha == sha


def test_range_requests_return_the_slice(served):
    data, url = served.data(SHARD), served.url()
    assert url == f"{served.hub.url}/datasets/{DATASET}/resolve/main/{SHARD}"
    head = httpx.head(url)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)
    assert head.headers["X-Repo-Commit"] == served.sha and head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    part = _get(url, Range="bytes=10-99")
    assert part.status_code == 206 and part.content == data[10:100]
    assert part.headers["Content-Range"] == f"bytes 10-99/{len(data)}"
    assert _get(url, Range="bytes=1000-").content == data[1000:]
    assert _get(url, Range="bytes=-7").content == data[-7:]
    beyond = _get(url, Range=f"bytes={len(data)}-")
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"


def test_request_log_records_each_request(served):
    _get(served.url(), Range="bytes=0-9")
    last = served.hub.requests[-1]
    assert last["method"] == "GET" and last["status"] == 206
    assert last["path"] == f"/datasets/{DATASET}/resolve/main/{SHARD}"
    assert last["headers"]["Range"] == "bytes=0-9"


# --- auth ---


def test_token_is_required_and_checked(tmp_path):
    with _serve(tmp_path, token="hf_secret") as served:
        with pytest.raises(GatedRepoError):
            HfApi().repo_info(DATASET, repo_type="dataset")
        with pytest.raises(GatedRepoError):
            hf_hub_download(DATASET, SHARD, repo_type="dataset")
        assert _get(served.url()).status_code == 401
        wrong = _get(served.url(), Authorization="Bearer hf_wrong")
        assert wrong.status_code == 401 and b"hf_wrong" not in wrong.content
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(token="hf_wrong").repo_info(DATASET, repo_type="dataset")
        assert err.value.response.status_code == 401 and not isinstance(err.value, RepositoryNotFoundError)
        assert HfApi().repo_info(DATASET, repo_type="dataset", token="hf_secret").sha == served.sha


def test_token_from_environment_is_sent(tmp_path):
    with _serve(tmp_path, token="hf_secret") as served:
        os.environ["HF_TOKEN"] = "hf_secret"  # use() restores HF_TOKEN when the block ends
        path = hf_hub_download(DATASET, SHARD, repo_type="dataset")
        assert Path(path).read_bytes() == served.data(SHARD)
        assert served.hub.requests[-1]["headers"]["Authorization"] == "Bearer hf_secret"
        assert all(r["status"] < 400 for r in served.hub.requests)
    assert os.environ.get("HF_TOKEN") != "hf_secret"


# --- faults, as a plain client sees them ---


@pytest.mark.parametrize("kind", ["404", "429", "500", "502", "503"])
def test_status_faults_then_normal_service(served, kind):
    served.hub.fail("commercial/*.tar", kind, times=2, **({"retry_after": 7} if kind == "429" else {}))
    assert _get(served.url("commercial/000001.tar")).status_code == int(kind)
    assert _get(served.url("noncommercial/000000.tar")).status_code == 200  # pattern does not match
    failed = _get(served.url())
    assert failed.status_code == int(kind)
    if kind == "429":
        assert failed.headers["Retry-After"] == "7"
    if kind == "404":
        assert failed.headers["X-Error-Code"] == "EntryNotFound"
    assert _get(served.url()).content == served.data(SHARD)


def test_reset_breaks_the_body(served):
    served.hub.fail(SHARD, "reset")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        _get(served.url())
    assert _get(served.url()).content == served.data(SHARD)


def test_stall_times_out_a_reader(served):
    served.hub.fail(SHARD, "stall", seconds=3)
    start = time.monotonic()
    with httpx.stream("GET", served.url(), timeout=1.0) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            response.read()
    assert time.monotonic() - start < 2.5
    assert _get(served.url()).content == served.data(SHARD)


def test_truncate_looks_complete_over_http(served):
    data = served.data(SHARD)
    served.hub.fail(SHARD, "truncate", fraction=0.25)
    short = _get(served.url())
    assert short.status_code == 200 and int(short.headers["Content-Length"]) == len(short.content)
    assert short.content == data[: len(data) // 4]
    with pytest.raises(tarfile.ReadError), tarfile.open(fileobj=io.BytesIO(short.content)) as tar:
        [tar.extractfile(m).read() for m in tar.getmembers()]
    assert _get(served.url()).content == data


def test_html_error_page_instead_of_tar(served):
    served.hub.fail(SHARD, "html")
    page = _get(served.url())
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.content.lstrip().lower().startswith(b"<!doctype html")
    with pytest.raises(tarfile.ReadError):
        tarfile.open(fileobj=io.BytesIO(page.content))
    assert _get(served.url()).content == served.data(SHARD)


def test_head_requests_do_not_use_up_body_faults(served):
    served.hub.fail(SHARD, "truncate")
    assert int(httpx.head(served.url()).headers["Content-Length"]) == len(served.data(SHARD))
    assert len(_get(served.url()).content) == len(served.data(SHARD)) // 2


def test_fail_rejects_unknown_kinds_and_options(served):
    with pytest.raises(ValueError, match="unknown fault kind"):
        served.hub.fail(SHARD, "timeout")
    with pytest.raises(ValueError, match="seconds"):
        served.hub.fail(SHARD, "truncate", seconds=3)


# --- faults, as huggingface_hub sees them ---


def test_hf_download_checks_size_against_head(served, tmp_path):
    served.hub.fail(SHARD, "truncate")
    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download(DATASET, SHARD, repo_type="dataset", cache_dir=tmp_path / "c1")
    path = hf_hub_download(DATASET, SHARD, repo_type="dataset", cache_dir=tmp_path / "c2")
    assert Path(path).read_bytes() == served.data(SHARD)


def test_hf_download_restarts_after_an_early_eof(served, tmp_path):
    served.hub.fail(SHARD, "stall", seconds=0)
    path = hf_hub_download(DATASET, SHARD, repo_type="dataset", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == served.data(SHARD)
    assert [r["method"] for r in served.hub.requests if "/resolve/" in r["path"]] == ["HEAD", "GET", "GET"]


def test_hf_errors_for_unknown_repo_revision_and_file(served):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("BIOMEDICA/no_such_dataset", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("BIOMEDICA/no_such_dataset", SHARD, repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files(DATASET, repo_type="dataset", revision="v9")
    with pytest.raises(RemoteEntryNotFoundError) as err:
        hf_hub_download(DATASET, "commercial/999999.tar", repo_type="dataset")
    assert isinstance(err.value, EntryNotFoundError)


# --- pointing huggingface_hub at the server ---


def test_use_points_at_the_server_and_restores(tmp_path):
    names = ["HF_ENDPOINT", "HF_HOME", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"]
    env_before = {n: os.environ.get(n) for n in names}
    consts_before = (constants.ENDPOINT, constants.HF_HUB_CACHE, constants.HF_TOKEN_PATH, hf_api.api.endpoint)
    folder = _write_repo(tmp_path / "repo")
    with FakeHub() as hub:
        hub.add_dataset(DATASET, folder)
        with hub.use(token="hf_anything"):
            assert constants.ENDPOINT == hub.url == os.environ["HF_ENDPOINT"] == hf_api.api.endpoint
            assert hf_hub_url(DATASET, SHARD, repo_type="dataset").startswith(hub.url)
            assert Path(constants.HF_HUB_CACHE).is_relative_to(os.environ["HF_HOME"])
            assert os.environ["HF_TOKEN"] == "hf_anything" and "HF_HUB_OFFLINE" not in os.environ
            home = Path(os.environ["HF_HOME"])
            import huggingface_hub

            assert sorted(huggingface_hub.list_repo_files(DATASET, repo_type="dataset")) == FILES
    assert {n: os.environ.get(n) for n in names} == env_before
    assert (
        constants.ENDPOINT,
        constants.HF_HUB_CACHE,
        constants.HF_TOKEN_PATH,
        hf_api.api.endpoint,
    ) == consts_before
    assert not home.exists()


def test_cdn_redirect_keeps_the_token_on_the_hub(tmp_path):
    with _serve(tmp_path, token="hf_secret", cdn_redirect=True) as served:
        path = hf_hub_download(DATASET, SHARD, repo_type="dataset", token="hf_secret")
        assert Path(path).read_bytes() == served.data(SHARD)
        resolve = [r for r in served.hub.requests if "/resolve/" in r["path"]]
        cdn = [r for r in served.hub.requests if r["path"].startswith("/cdn-lfs/")]
        assert {r["status"] for r in resolve} == {302} and cdn and cdn[-1]["status"] == 200
        assert all("Authorization" not in r["headers"] for r in cdn)
        served.hub.fail(SHARD, "reset")  # body faults move to the leg that sends the bytes
        redirected = httpx.get(served.url(), headers={"Authorization": "Bearer hf_secret"})
        assert redirected.status_code == 302
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            httpx.get(redirected.headers["Location"])
