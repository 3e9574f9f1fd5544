"""Helpers every test folder shares (one copy of each)."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from typing import Any, Callable, NoReturn, Optional

import pytest

from engine import Workflow
from engine.runtime import close_executors


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "",
               interval: float = 0.005, context: Optional[Callable[[], Any]] = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Fails the test after ``timeout`` seconds, saying what it waited for, the last
    value seen and, if given, ``context()`` (e.g. the run's state and nodes).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\ncontext: {context()!r}" if context else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}; "
                        f"last value: {value!r}{extra}")
        time.sleep(interval)


def under_ci() -> bool:
    """Whether the tests run under CI: ``CI`` set to 1, true, yes or on, in any case
    (CI services spell it differently). There, what would skip a test fails it."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the calling test for want of ``reason``; fail it instead ``under_ci()``, where
    every test must run."""
    if under_ci():
        pytest.fail(f"under CI (CI={os.environ['CI']!r}) this test must run, but: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finished_run(store, name: str = "finished", progress: int = 10, owner: Optional[str] = None):
    """A two-step run, completed; ``progress`` step_progress events in its first step."""
    wf = Workflow(name)

    @wf.step()
    def a(ctx):
        for i in range(progress):
            ctx.progress((i + 1) / progress)
        return 1

    @wf.step(deps=["a"])
    def b(a):
        return a + 1

    run = wf.run(store=store, timeout=30, owner=owner)
    assert run.state == "completed"
    return run


def shutdown_executors(store) -> None:
    """Stop this store's executors still alive in this process (e.g. of failed runs,
    which stay up for a retry), so that they do not poll a store nobody reads."""
    close_executors(store)


#: For tests of one store's internals: run them on SQLite only (``db_url``'s other param).
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def raw_rows(store, sql: str) -> list[tuple]:
    """Rows of ``sql`` read straight from the store's database, around the store object."""
    from engine.store import PostgresStore

    if isinstance(store, PostgresStore):
        import psycopg

        with psycopg.connect(store._conninfo) as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
