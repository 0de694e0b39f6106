"""The fake hub's injected faults (tests/helpers/hub/faults.py) look like the network failures they stand for,
to a plain HTTP client and to huggingface_hub alike."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.helpers.fake_hub_repo import DATASET, SHARD
from tests.helpers.fake_hub_repo import http_get as _get

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
