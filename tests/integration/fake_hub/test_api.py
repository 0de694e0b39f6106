"""The fake hub (tests/helpers/hub/) is faithful enough: huggingface_hub 2.4 gets repo info, listings, paths
info, downloads and ranges from it as from huggingface.co, and each request is logged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
from huggingface_hub import HfApi, hf_api, hf_hub_download

from tests.helpers.fake_hub_repo import DATASET, FILES, SHARD
from tests.helpers.fake_hub_repo import http_get as _get
from tests.helpers.fake_hub_repo import serve as _serve

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
