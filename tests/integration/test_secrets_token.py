"""The HF token goes only to the hub endpoint itself (bmca_clip/data/auth.py): scheme, host and port compared
exactly, a path-prefixed endpoint's path respected, and over the wire a look-alike host gets nothing."""

from __future__ import annotations

import pytest
from huggingface_hub import constants

from bmca_clip.data.auth import auth_headers
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.shards import open_shard
from tests.helpers.biomedica_hub import REPO_ID, SHARD, TOKEN
from tests.helpers.hub import FakeHub

# --- item 10: the HF token goes to the hub endpoint and nowhere else -------------------------------------


@pytest.mark.parametrize(
    "endpoint, url, gets_token",
    [
        ("https://huggingface.co", "https://huggingface.co/datasets/a/b/resolve/main/x.tar", True),
        ("https://huggingface.co", "https://huggingface.co:443/datasets/a/b/resolve/main/x.tar", True),
        ("https://huggingface.co", "HTTPS://HuggingFace.CO/datasets/a/b/resolve/main/x.tar", True),
        ("https://huggingface.co/", "https://huggingface.co/datasets/x.tar", True),
        ("https://huggingface.co", "https://huggingface.co.evil.example/datasets/x.tar", False),
        ("https://huggingface.co", "https://huggingface.co:8443/datasets/x.tar", False),
        ("https://huggingface.co", "http://huggingface.co/datasets/x.tar", False),
        ("https://huggingface.co", "https://huggingface.co@evil.example/datasets/x.tar", False),
        ("https://huggingface.co", "https://huggingface.co:443@evil.example/x.tar", False),
        ("https://huggingface.co", "https://evil.example/https://huggingface.co/x.tar", False),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/datasets/x.tar", True),
        ("http://127.0.0.1:8000", "http://127.0.0.1:80001/datasets/x.tar", False),
        ("http://127.0.0.1:8000", "http://127.0.0.1/datasets/x.tar", False),
        ("http://hub.internal", "http://hub.internal:80/datasets/x.tar", True),
        ("https://mirror.example/hf", "https://mirror.example/hf/datasets/x.tar", True),
        ("https://mirror.example/hf", "https://mirror.example/hfx/datasets/x.tar", False),
        ("https://mirror.example/hf", "https://mirror.example/other/x.tar", False),
        ("https://mirror.example/hf", "https://mirror.example/hf/../other/x.tar", False),
    ],
)
def test_the_token_goes_only_to_the_hub_endpoint(endpoint, url, gets_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    sent = auth_headers(url).get("authorization", "")
    if gets_token:
        assert sent == f"Bearer {TOKEN}", (endpoint, url)
    else:  # nothing, or the URL's own user:password@ as Basic auth
        assert TOKEN not in sent and not sent.startswith("Bearer"), (endpoint, url, sent)


def test_over_the_wire_the_hub_gets_the_token_and_a_look_alike_host_does_not(tmp_path):
    """The same server reached as 127.0.0.1 (the endpoint), as localhost (another host) and through a
    userinfo trick: only the first request carries the token."""
    (tmp_path / "repo" / "commercial").mkdir(parents=True)
    (tmp_path / "repo" / SHARD).write_bytes(b"\0" * 1024)
    with FakeHub() as hub, hub.use(token=TOKEN):
        hub.add_dataset(REPO_ID, tmp_path / "repo")
        port = hub.url.rsplit(":", 1)[1]
        path = f"/datasets/{REPO_ID}/resolve/main/{SHARD}"
        for url in (
            f"http://127.0.0.1:{port}{path}",
            f"http://localhost:{port}{path}",
            f"http://127.0.0.1:{port}@localhost:{port}{path}",
        ):
            with open_shard(url, HttpPolicy(retries=1, timeout_s=5), {}) as stream:
                assert stream.read() == b"\0" * 1024
    sent = [r["headers"].get("Authorization", "") for r in hub.requests]
    assert sent[0] == f"Bearer {TOKEN}"
    assert len(sent) == 3 and not any(TOKEN in header for header in sent[1:]), sent
