"""The fake hub's token check and how huggingface_hub is pointed at it (tests/helpers/hub/env.py): a token is
required and checked, HF_TOKEN is sent, `use()` restores what it changed, and a CDN redirect keeps the token
on the hub."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, constants, hf_api, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
)

from tests.helpers.fake_hub_repo import DATASET, FILES, SHARD
from tests.helpers.fake_hub_repo import http_get as _get
from tests.helpers.fake_hub_repo import serve as _serve
from tests.helpers.fake_hub_repo import write_repo as _write_repo
from tests.helpers.hub import FakeHub

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
