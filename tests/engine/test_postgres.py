"""What only the PostgreSQL store does: wake-ups by LISTEN/NOTIFY instead of polling,
a lost notification that only delays, and a gap-free log under concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psycopg
import pytest

import engine
from engine import Workflow
from engine.store import Commit
from engine_support import check_log, of_type, wait_until


@pytest.fixture
def store(pg_url):
    s = engine.open_store(pg_url)
    yield s
    engine.store.close_store(pg_url)


def looping(name: str, go: threading.Event) -> Workflow:
    wf = Workflow(name)

    @wf.step()
    def loop(ctx):
        while not go.is_set():
            ctx.checkpoint()
            time.sleep(0.002)
        return "done"

    return wf


class Counting:
    """Counts calls of a store method (to see who polls)."""

    def __init__(self, store, name: str):
        self.calls = 0
        inner = getattr(store, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        self.restore = lambda: delattr(store, name)
        setattr(store, name, counted)


def test_an_idle_executor_sleeps_until_a_command_is_notified(store):
    go = threading.Event()
    run = looping("idle", go).start(store)
    try:
        wait_until(lambda: run.snapshot()["nodes"][0]["status"] == "running", 10, "the step to run")
        reads = Counting(store, "pending_commands")
        time.sleep(1.0)  # idle: what the executor does when nothing happens
        idle_reads = reads.calls
        t0 = time.monotonic()
        run.pause()  # returns when the executor has applied it
        latency = time.monotonic() - t0
        reads.restore()
    finally:
        go.set()
    print(f"\nidle executor: {idle_reads} command reads in 1 s; pause applied after {latency * 1000:.0f} ms")
    # Polling every 20 ms would be ~50 reads; the lease renewal (every 2 s) may add one.
    assert idle_reads <= 2
    assert latency < 1.0  # woken by the notification, not by the next lease renewal
    run.resume()
    assert run.wait(10) == "completed"


def test_a_lost_notification_connection_delays_nothing_for_good(store, pg_url):
    """Kill the LISTEN connection: the listener reconnects and wakes everyone, so a
    command sent meanwhile is still applied."""
    go = threading.Event()
    run = looping("listener lost", go).start(store)
    try:
        wait_until(lambda: run.snapshot()["nodes"][0]["status"] == "running", 10, "the step to run")
        listener = store._listener
        assert listener is not None and listener.connected.wait(5)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%%'").fetchall()
            assert killed, "found no LISTEN connection to kill"
            # A command committed while nobody listens: its notification is lost.
            ack = store.submit_command(run.id, "pause")
            assert ack["ok"], ack
        wait_until(lambda: run.state == "paused", 15, "the pause to be applied after the listener reconnects")
        assert listener.connected.wait(10)
        run.resume()
    finally:
        go.set()
    assert run.wait(10) == "completed"
    check_log(run)


def test_concurrent_writers_keep_every_runs_seq_gap_free(store, pg_url, tmp_path):
    """Executors in three processes and commands from threads, all at once."""
    script = tmp_path / "chatty.py"
    flag = tmp_path / "enough"
    script.write_text(
        "import os, sys, engine\n"
        "store = engine.open_store(sys.argv[1])\n"
        "wf = engine.Workflow('chatty ' + sys.argv[2])\n"
        "@wf.step()\n"
        "def talk(ctx):\n"
        "    i = 0\n"
        "    while i < 3000 or not os.path.exists(sys.argv[3]):\n"
        "        ctx.progress(message=str(i))\n"
        "        i += 1\n"
        "        if i % 50 == 0:\n"
        "            ctx.checkpoint()\n"
        "run = wf.run(store, timeout=120)\n"
        "print(run.id, run.state.value)\n")
    procs = [subprocess.Popen([sys.executable, str(script), pg_url, str(p), str(flag)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(3)]
    try:
        wait_until(lambda: len(store.runs()) == 3, 60, "three runs to start")
        ids = [r["id"] for r in store.runs()]
        stop = threading.Event()
        acks: list[dict] = []

        def steer(run_id: str) -> None:
            while not stop.is_set():
                for action in ("pause", "resume"):
                    acks.append(store.submit_command(run_id, action))

        steerers = [threading.Thread(target=steer, args=(i,)) for i in ids]
        for t in steerers:
            t.start()
        time.sleep(0.5)  # let commands race the writers for a while
        stop.set()
        for t in steerers:
            t.join(10)
        # Every command answered; then leave every run executing, and let it finish.
        for run_id in ids:
            wait_until(lambda: not store.pending_commands(run_id), 30, "commands to be applied")
            if store.run_doc(run_id)["state"] in ("pausing", "paused"):
                assert store.submit_command(run_id, "resume")["ok"]
        flag.write_text("")
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert all(out.split()[1] == "completed" for out, _ in outs), outs
    assert any(a["ok"] for a in acks)
    for run_id in ids:
        run = store.run(run_id)
        events = check_log(run)  # seq 1..N without a gap, replay == snapshot
        assert len(of_type(events, "step_progress")) >= 3000
        applied = [e for e in events if e["data"].get("command_id")]
        assert applied, "no command reached this run's executor"


def test_a_run_rides_out_dropped_database_connections(store, pg_url):
    """Every connection the store holds is killed, twice, while a step writes: the
    journal retries, nothing is lost or written twice."""
    go = threading.Event()
    wf = Workflow("outage")

    @wf.step()
    def talk(ctx):
        i = 0
        while i < 2000 or not go.is_set():
            ctx.progress(message=str(i))
            i += 1
            if i % 20 == 0:
                time.sleep(0.001)
        return i

    run = wf.start(store)
    try:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            for _ in range(2):
                seen = store.bounds(run.id)[1]
                wait_until(lambda: store.bounds(run.id)[1] > seen + 200, 20, "more events")
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
                assert killed
    finally:
        go.set()
    assert run.wait(30) == "completed"
    events = check_log(run)  # gap-free, each event once, replay == snapshot
    assert len(of_type(events, "step_progress")) == run.result("talk")
