"""Fixtures for the engine tests: a fresh store per test (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

import engine
from engine_support import shutdown_executors


@pytest.fixture
def store(db_url):
    """A new store (SQLite file or PostgreSQL database). Its executors are stopped and it
    is closed afterwards."""
    s = engine.open_store(db_url)
    yield s
    shutdown_executors(s)
    s.close()
