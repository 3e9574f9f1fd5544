"""Durable work across replicas: two Jupyter server processes on one PostgreSQL database,
the run in a third process (a kernel's stand-in, durable_kernel.py), results above the
inline size in files under the store's results_url.

- A re-run sent as REST to replica B is applied once by the run's own process; clients
  on both replicas end with the same contiguous log, the store's.
- A run deleted through replica B disappears for a client of replica A (run_deleted:
  out of its run list, its follower told), and its rows and result files are gone, though
  the servers name only the database (not the kernels' results_url).
- A run whose process was SIGKILLed is resumed (wf.resume) by another process; clients
  of both replicas, following since before the kill, see the failure, the resume and
  the completion in one contiguous log; nothing that had completed runs twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cmbagent_jupyter.client import Client
from cmbagent_jupyter.client.errors import RunNotFound
from fault_support import App, HERE, tail
from support import raw_rows, wait_until_async

KERNEL = HERE / "durable_kernel.py"
STEPS = ("load", "big", "wait", "summary")
TABLES = ("runs", "nodes", "edges", "events", "results", "commands", "approvals")


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"


@pytest.fixture
def store_url(pg_url, results_dir):
    """One PostgreSQL database and one results directory, as every process names them."""
    return f"{pg_url}?results_url={results_dir}&result_inline_max=4096"


class Kernel:
    """durable_kernel.py in its own process (see there), its output in a file."""

    def __init__(self, workdir: Path, store_url: str, *args: str):
        self.workdir = workdir
        self.out = workdir / f"kernel-{args[0]}.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(KERNEL), store_url, str(workdir), *args],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    async def run_id(self) -> str:
        path = self.workdir / "run_id"

        def ready():
            if self.proc.poll() is not None and not path.exists():
                raise AssertionError(f"the kernel exited ({self.proc.returncode}):\n{tail(self.out)}")
            return path.exists() and path.read_text()

        return await wait_until_async(ready, 60, "the kernel's run id")

    async def exited(self) -> int:
        await wait_until_async(lambda: self.proc.poll() is not None, 60, "the kernel to exit", interval=0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def kernels(tmp_path, store_url):
    started: list[Kernel] = []

    def start(*args: str) -> Kernel:
        k = Kernel(tmp_path, store_url, *args)
        started.append(k)
        return k

    yield start
    (tmp_path / "go").touch()
    (tmp_path / "stop").touch()
    for k in started:
        try:
            k.proc.wait(20)
        except subprocess.TimeoutExpired:
            k.kill()


def counts(workdir: Path) -> dict[str, int]:
    ran = (workdir / "counts").read_text().split() if (workdir / "counts").exists() else []
    return {s: ran.count(s) for s in STEPS if s in ran}


def step_starts(store, run_id: str, node_id: str) -> int:
    return sum(1 for e in store.events(run_id).dicts()
               if e["event_type"] == "step_started" and e["data"]["node_id"] == node_id)


async def follow(server, run_id: str, after_seq=None) -> App:
    """A client of ``server`` following the run (from a snapshot, or from ``after_seq``)
    and the run list."""
    app = App(Client(server.url, server.token, first_backoff=0.05, max_backoff=0.5), run_id, after_seq)
    app.client.subscribe_runs()
    await app.start(60)
    return app


async def same_log_everywhere(store, run_id: str, apps: list[App]) -> list[dict]:
    """Every client has exactly the store's log: seq 1..N, each event once, in order."""
    log = store.events(run_id).dicts()
    await asyncio.gather(*(a.catch_up(60) for a in apps))
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    for app in apps:
        got = app.events()
        base = app.after_seq if app.after_seq is not None else got[0]["seq"] - 1
        assert [(e["seq"], e["id"]) for e in got] == [(e["seq"], e["id"]) for e in log[base:]], \
            f"the client of {app.client.url} has another log"
    return log


async def test_rerun_via_one_replica_and_delete_via_the_other(spawn, open_db, kernels, tmp_path, results_dir,
                                                            pg_url):
    # The servers are configured with the database alone (they never write a result): the
    # deletion finds the run's result files from its rows.
    a, b = spawn.server("replica-a", url=pg_url), spawn.server("replica-b", url=pg_url)
    (tmp_path / "go").touch()
    kernel = kernels("hold")
    await asyncio.gather(a.wait_ready(120), b.wait_ready(120))
    run_id = await kernel.run_id()
    store = open_db()
    assert store.url.startswith("postgresql"), store.url
    await wait_until_async(lambda: store.run_doc(run_id)["state"] == "completed", 60, "the run to complete")
    assert counts(tmp_path) == {s: 1 for s in STEPS}
    files = list((results_dir / run_id).iterdir())
    assert len(files) == 1 and files[0].name.startswith("big."), files  # only big's is above the inline size
    on_a, on_b = await follow(a, run_id), await follow(b, run_id, after_seq=0)
    try:
        ack = await b.command(run_id, "rerun", node_id="big", command_id="rerun-big-via-b")
        assert ack["ok"] is True, ack
        assert await b.command(run_id, "rerun", node_id="big", command_id="rerun-big-via-b") == ack
        await wait_until_async(lambda: step_starts(store, run_id, "summary") == 2
                               and store.run_doc(run_id)["state"] == "completed", 60, "the re-run")
        # Applied once, by the kernel's process: big and what is downstream ran again, once.
        assert counts(tmp_path) == {"load": 1, "big": 2, "wait": 2, "summary": 2}
        log = await same_log_everywhere(store, run_id, [on_a, on_b])
        reopened = [e for e in log if e["event_type"] == "workflow_state_changed"
                    and (e["data"]["old_state"], e["data"]["new_state"]) == ("completed", "executing")]
        assert len(reopened) == 1
        assert on_a.client.state(run_id).run["state"] == "completed"
        assert store.run(run_id).result("summary") == 3 + 64 * 1024

        (tmp_path / "stop").touch()
        assert await kernel.exited() == 0, tail(kernel.out)
        assert list((results_dir / run_id).iterdir())  # the re-run's file of big
        code, body = await b.rest("DELETE", f"runs/{run_id}")
        assert (code, body) == (200, {"deleted": run_id})
        await on_a.client.wait_for(lambda: run_id not in on_a.client.runs(), 30)
        await on_b.client.wait_for(lambda: run_id not in on_b.client.runs(), 30)
        for app in (on_a, on_b):  # the run's followers were told too: their streams end so
            with pytest.raises(RunNotFound, match="was deleted"):
                await app.close()
        for table in TABLES:
            column = "id" if table == "runs" else "run_id"
            assert raw_rows(store, f"SELECT COUNT(*) FROM {table} WHERE {column} = '{run_id}'") == [(0,)], table
        assert not (results_dir / run_id).exists()
        for server in (a, b):
            code, _ = await server.rest("GET", f"runs/{run_id}")
            assert code == 404, server.name
    finally:
        for app in (on_a, on_b):
            await app.client.close()
    assert not spawn.server_problems()


async def test_a_run_resumed_by_another_process_is_followed_on_both_replicas(spawn, open_db, kernels, tmp_path):
    a, b = spawn.server("replica-a"), spawn.server("replica-b")
    first = kernels("interrupted")
    await asyncio.gather(a.wait_ready(120), b.wait_ready(120))
    run_id = await first.run_id()
    store = open_db()
    await wait_until_async(lambda: counts(tmp_path).get("wait") == 1, 60, "the step wait to start")
    on_a, on_b = await follow(a, run_id), await follow(b, run_id, after_seq=0)
    try:
        first.kill()  # the kernel dies mid-run
        (tmp_path / "go").touch()
        second = kernels("resume", run_id)
        assert await second.exited() == 0, tail(second.out)
        assert store.run_doc(run_id)["state"] == "completed"
        # load and big completed before the kill: not run again; wait was interrupted.
        assert counts(tmp_path) == {"load": 1, "big": 1, "wait": 2, "summary": 1}
        log = await same_log_everywhere(store, run_id, [on_a, on_b])
        types = [e["event_type"] for e in log]
        lost = [e for e in log if e["event_type"] == "workflow_failed"]
        assert len(lost) == 1 and lost[0]["data"].get("reason") == "executor_lost", lost
        [reopened] = [e for e in log if e["event_type"] == "run_reopened"]
        assert reopened["data"]["pid"] == second.proc.pid != first.proc.pid
        assert set(reopened["data"]["rerun"]) == {"wait", "summary"}
        assert types.index("workflow_failed") < types.index("run_reopened") < types.index("workflow_completed")
        for app in (on_a, on_b):
            assert app.client.runs()[run_id]["state"] == "completed", app.client.url
        assert on_a.client.state(run_id).run["state"] == "completed"
        assert {n["id"]: n["status"] for n in on_a.client.state(run_id).snapshot()["nodes"]} == \
            {s: "completed" for s in STEPS}
        assert store.run(run_id).result("big") == bytes([3]) * 64 * 1024  # from its file
    finally:
        for app in (on_a, on_b):
            await app.client.close()
    assert not spawn.server_problems()
