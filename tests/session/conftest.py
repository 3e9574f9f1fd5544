"""Fixtures for the sans-I/O Session tests: a fresh store per test (SQLite and PostgreSQL), no server."""

from __future__ import annotations

import pytest

import engine
from session_support import GATES, shutdown_executors


@pytest.fixture
def store(db_url):
    s = engine.open_store(db_url)
    yield s
    for gate in GATES:
        gate.set()
    GATES.clear()
    shutdown_executors(s)
    s.close()
