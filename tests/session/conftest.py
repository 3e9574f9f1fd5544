"""Fixtures for the sans-I/O Session tests: a fresh SQLite store per test, no server."""

from __future__ import annotations

import pytest

import engine
from session_support import GATES, shutdown_executors


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "runs.sqlite"


@pytest.fixture
def store(store_path):
    s = engine.open_store(str(store_path))
    yield s
    for gate in GATES:
        gate.set()
    GATES.clear()
    shutdown_executors(s)
    s.close()
