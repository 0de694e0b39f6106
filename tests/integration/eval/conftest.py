"""Fixtures of the eval loader tests (test_loader_*.py, test_shipped_tasks.py): every stand-in repo on one
FakeHub, and the tiny CLIP model; each module gets its own of both (module scope)."""

from __future__ import annotations

import pytest

from tests.helpers.eval_fixtures import tiny_clip
from tests.helpers.eval_hub_repos import make_hub_repos
from tests.helpers.hub import FakeHub


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Every stand-in repo on one FakeHub, huggingface_hub pointed at it (with an empty cache)."""
    repos = make_hub_repos(tmp_path_factory.mktemp("repos"))
    with FakeHub() as server, server.use():
        for key, (folder, revision) in repos.items():
            server.add_dataset(key.split("@")[0], folder, revision=revision)
        yield server


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()
