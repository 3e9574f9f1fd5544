"""What a Dask run leaves behind: nothing on the scheduler once ``run.wait()`` returns
(so the natural ``with Client(...)`` block can close its client), and no noise while it
is paused."""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager

import pytest

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from engine import Workflow  # noqa: E402
from engine.runtime import local_executor  # noqa: E402
from engine_support import (  # noqa: E402
    DASK_TIMEOUT,
    check_log,
    shutdown_executors,
    statuses,
    wait_state,
    wait_until,
)
from support import sqlite_only  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # steps travel by value


@contextmanager
def logged(*names: str, level: int = logging.WARNING):
    """Records of ``level`` and up from the named loggers (and theirs below) meanwhile.

    Handlers on the loggers themselves: Dask's do not propagate to the root logger."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level)
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def described(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records]


def scheduler_leftovers(client) -> dict:
    """What the runs' clean-up must leave empty on the scheduler: claims (multi-locks) and
    the runs' Variables and Events."""
    def look(dask_scheduler):
        ext = dask_scheduler.extensions
        return {"claims": {k: list(v) for k, v in ext["multi_locks"].locks.items() if v},
                "claim_holders": list(ext["multi_locks"].requests),
                "variables": [n for n in ext["variables"].variables if n.startswith("cmbagent-")],
                "events": [n for n in ext["events"]._events if str(n).startswith("cmbagent-")]}

    return client.run_on_scheduler(look)


@sqlite_only  # the store plays no part here
def test_with_client_blocks_close_their_client_after_the_clean_up(store, healthy):
    wf = Workflow("dask with-client")

    @wf.step()
    def one(ctx):
        ctx.checkpoint()
        return os.getpid()

    @wf.step(deps=["one"])
    def two(one):
        return one

    failing = Workflow("dask with-client, failing")  # a failed run keeps its executor

    @failing.step()
    def broken(ctx):
        ctx.checkpoint()
        raise ValueError("no luck")

    address, runners = healthy.scheduler.address, []
    with logged("engine", "distributed") as records:
        for i in range(6):
            with distributed.Client(address, set_as_default=False) as client:
                run = (failing if i % 3 == 2 else wf).run(store=store, dask=client,
                                                          timeout=DASK_TIMEOUT)
            assert run.state == ("failed" if i % 3 == 2 else "completed")
            # The clean-up is over when wait() returns: the claims are released already.
            assert scheduler_leftovers(healthy) == {"claims": {}, "claim_holders": [],
                                                    "variables": [], "events": []}
            runners.append(local_executor(run.id).pool)
        shutdown_executors(store)  # the failed runs' executors too
        wait_until(lambda: all(r.join(0) for r in runners), DASK_TIMEOUT, "the runners to stop")
    assert not [r for r in described(records) if "could not" in r or r.startswith("ERROR")], \
        described(records)


@sqlite_only
def test_a_paused_run_is_quiet(store, healthy, tmp_path):
    wf = Workflow("dask quiet pause")
    started, go = str(tmp_path / "started"), str(tmp_path / "go")

    @wf.step()
    def held(ctx):
        open(started, "w").close()
        while not os.path.exists(go):
            ctx.checkpoint()
            time.sleep(0.01)
        return "done"

    run = wf.start(store=store, dask=healthy)
    wait_until(lambda: os.path.exists(started), DASK_TIMEOUT, "the step to start")
    with logged("engine", "distributed") as records:
        run.pause()
        assert wait_state(run, "paused", timeout=DASK_TIMEOUT) == "paused"
        assert statuses(run) == {"held": "paused"}
        # Held at its checkpoint for longer than three of the worker's waits for an answer.
        time.sleep(6.5)
        assert statuses(run) == {"held": "paused"}
        run.resume()
        open(go, "w").close()
        assert run.wait(DASK_TIMEOUT) == "completed"
    assert run.result("held") == "done"
    check_log(run)
    assert not [r for r in records if r.levelno >= logging.ERROR], described(records)
