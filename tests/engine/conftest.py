"""Fixtures for the engine tests: a fresh SQLite store per test."""

from __future__ import annotations

import pytest

import engine
from engine_support import shutdown_executors


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "runs.sqlite"


@pytest.fixture
def store(store_path):
    """A store on a new SQLite file. Its executors are stopped and it is closed afterwards."""
    s = engine.open_store(str(store_path))
    yield s
    shutdown_executors(s)
    s.close()
