"""The fake hub's tests share one fixture: the served repo of tests/helpers/fake_hub_repo.py, fresh per test."""

from __future__ import annotations

import pytest

from tests.helpers.fake_hub_repo import serve


@pytest.fixture
def served(tmp_path):
    with serve(tmp_path) as served:
        yield served
