"""A PostgreSQL stall longer than a lease does not kill a live run.

The database is frozen (SIGSTOP, connections left open) for 20 s while a run executes
in another process, and a reaper runs as a Jupyter server's would. Renewals queue
behind the stall like everything else, so nothing may be judged by the lease's age
alone: the run carries on when the database returns, and completes with every event.
"""

from __future__ import annotations

import threading
import time

import pytest

import engine
from engine_support import Script, check_log, of_type, wait_until
from pg_cluster import PgServer, Unavailable

STALL_S = 20.0
#: After the stall: long enough for a lease that had really lapsed to be judged dead.
AFTERWARDS_S = 16.0

TALKER = """
workdir = Path(sys.argv[2])
wf = Workflow("through a stall")

@wf.step()
def talk(ctx):
    i = 0
    while not (workdir / "go").exists():
        ctx.progress(message=str(i))
        i += 1
        time.sleep(0.02)
    return i

@wf.step(deps=["talk"])
def after(talk):
    return talk

run = wf.start(store=store)
publish(workdir / "run_id", run.id)
print(run.wait(300).value, run.result("after"))
"""


@pytest.fixture
def cluster():
    """A PostgreSQL cluster of this test's own: the test freezes it."""
    try:
        server = PgServer.throwaway()
    except Unavailable as exc:
        pytest.skip(f"PostgreSQL unavailable ({exc})")
    yield server
    server.stop()


class Reaper(threading.Thread):
    """Starts a reaping pass every second, each on a thread of its own: what a Jupyter
    server's periodic reaping, its command handlers and kernels opening the store do
    between them. A pass started during the stall waits for the database like the
    executor's renewal does, and may be answered first when it returns."""

    def __init__(self, store):
        super().__init__(name="test-reaper", daemon=True)
        self.store = store
        self.reaped: list[str] = []
        self.errors: list[str] = []
        self.passes: list[threading.Thread] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            one = threading.Thread(target=self._pass, daemon=True)
            one.start()
            self.passes.append(one)

    def _pass(self) -> None:
        try:
            self.reaped += self.store.reap()
        except Exception as exc:  # a failed pass is logged by the hub, and retried
            self.errors.append(repr(exc))

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        for one in self.passes:
            one.join(30)


def test_a_database_stall_longer_than_a_lease_kills_no_run(cluster, tmp_path):
    url = cluster.create_database()
    store = engine.open_store(url, pool_size=32)
    # A server that has served a while holds idle connections: passes started late in
    # the stall get one (and are answered as soon as it ends), instead of queueing.
    store._pool.resize(24, 32)
    store._pool.wait(30)
    talker = Script(tmp_path, "talker", TALKER).start(url, tmp_path)
    reaper = Reaper(store)
    try:
        run = store.run(talker.wait_for_file(tmp_path / "run_id"))
        wait_until(lambda: store.bounds(run.id)[1] > 20, 30, "the run to be talking")
        reaper.start()
        time.sleep(1.5)
        with cluster.frozen():
            time.sleep(STALL_S)
        during = store.bounds(run.id)[1]
        time.sleep(AFTERWARDS_S)  # the reaper goes on; the run must too
        assert store.bounds(run.id)[1] > during, "the run wrote nothing after the stall"
        (tmp_path / "go").touch()
        out = talker.check(120).split()
    finally:
        reaper.finish()
        talker.stop()
        engine.store.close_store(url)
    reopened = engine.open_store(url)  # a new store object: what a server would see next
    try:
        run = reopened.run(run.id)
        print(f"\nstall of {STALL_S:.0f} s: reaper passes failed {len(reaper.errors)} times, "
              f"reaped {reaper.reaped}; run {out[0]} after {out[1]} progress events")
        assert reaper.reaped == []
        assert out[0] == "completed", talker.stderr
        events = check_log(run)  # gap-free, replays to the stored snapshot
        said = [int(e["data"]["message"]) for e in of_type(events, "step_progress")]
        assert said == list(range(int(out[1]))), "progress events were lost or repeated"
        assert not [e for e in events if "executor_lost" in str(e["data"])]
        assert run.snapshot()["run"]["reason"] != "executor_lost"
    finally:
        engine.store.close_store(url)
