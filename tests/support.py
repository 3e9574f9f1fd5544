"""Helpers every test folder shares (one copy of each)."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import time
from typing import Any, Callable, NoReturn, Optional

import pytest

from engine import Workflow
from engine.runtime import close_executors


class _Poll:
    """The one meaning of waiting in the tests: ``predicate`` until it returns something
    truthy, failing after ``timeout`` seconds with what was awaited, the last value seen
    and, if given, ``context()`` (e.g. the run's state and nodes)."""

    def __init__(self, predicate: Callable[[], Any], timeout: float, what: str,
                 context: Optional[Callable[[], Any]]):
        self.predicate, self.timeout, self.what, self.context = predicate, timeout, what, context
        self.deadline = time.monotonic() + timeout
        self.value: Any = None

    def done(self) -> bool:
        """Ask once: True when the predicate holds (its value in ``value``); fails the test
        when it does not and the time is up."""
        self.value = self.predicate()
        if self.value:
            return True
        if time.monotonic() > self.deadline:
            extra = f"\ncontext: {self.context()!r}" if self.context else ""
            pytest.fail(f"timed out after {self.timeout} s waiting for {self.what or self.predicate!r}; "
                        f"last value: {self.value!r}{extra}")
        return False


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "",
               interval: float = 0.005, context: Optional[Callable[[], Any]] = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Fails the test after ``timeout`` seconds, saying what it waited for, the last
    value seen and, if given, ``context()`` (e.g. the run's state and nodes).
    ``wait_until_async`` is the same for coroutines (it yields to the event loop).
    """
    poll = _Poll(predicate, timeout, what, context)
    while not poll.done():
        time.sleep(interval)
    return poll.value


async def wait_until_async(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "",
                           interval: float = 0.005, context: Optional[Callable[[], Any]] = None) -> Any:
    """``wait_until`` in a coroutine: the event loop runs between the polls."""
    poll = _Poll(predicate, timeout, what, context)
    while not poll.done():
        await asyncio.sleep(interval)
    return poll.value


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
