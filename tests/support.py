"""Helpers every test folder shares (one copy of each)."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Optional

import pytest

from engine import Workflow
from engine.executor import close_executors


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finished_run(store, name: str = "finished", progress: int = 10):
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

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed"
    return run


def shutdown_executors(store) -> None:
    """Stop this store's executors still alive in this process (e.g. of failed runs,
    which stay up for a retry), so that they do not poll a store nobody reads."""
    close_executors(store)
