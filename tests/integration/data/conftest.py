"""The hub the streaming tests read from (test_hub_stream.py, test_hub_commits.py): a FakeHub that wants the
test token, with huggingface_hub pointed at it; a fresh one for each test."""

from __future__ import annotations

import pytest

from tests.helpers.biomedica_hub import TOKEN
from tests.helpers.hub import FakeHub


@pytest.fixture
def hub(tmp_path):
    with FakeHub(token=TOKEN) as server, server.use(token=TOKEN):
        yield server
