"""Fault 6: the store hangs. Every process of the PostgreSQL cluster is stopped (SIGSTOP)
for 20 s while a run streams events from another process to clients of one server.

The server's event loop never waits on the store: a core Jupyter route (``/api/status``)
keeps answering quickly throughout. The clients' sockets stay open (they ping every
second); each is told the store stopped answering, and that it answers again; then every
client catches up exactly: lost / duplicated / reordered = 0 / 0 / 0, and its state
equals the store's snapshot.

The cluster is this test's own (the session's shared one is never frozen).
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from checker import assert_clean, check
from cmbagent_jupyter.client import Client
from fault_support import App, StatusProbe, tail
from support import wait_until_async

RATE = 300  # events/s, until the test tells the writer to stop
STALL_S = 20.0
SUBSCRIBERS = 3
UNAVAILABLE_AFTER = 1.0  # s a store call may take before the clients are told
HEARTBEAT = 1.0  # s between the clients' pings
PING_TIMEOUT = 3.0  # s a pong may take before a client drops the connection


@pytest.fixture
def store_url(own_pg_cluster):
    return own_pg_cluster.create_database()


async def test_a_hung_store_never_freezes_the_server(spawn, open_db, own_pg_cluster, seed):
    rng = random.Random(seed)
    server = spawn.server(args=[
        # today's reaper would mark the run executor_lost after a stall longer than its
        # lease; this test is about the server, not the reaper
        "--CmbAgentApp.reap_interval=3600",
        "--CmbAgentApp.recheck_interval=1",
        f"--CmbAgentApp.store_unavailable_after={UNAVAILABLE_AFTER}"])
    writer = spawn.writer("--until-stop", "--rate", str(RATE))
    await server.wait_ready()
    run_id = await writer.run_id()
    store = open_db()

    clients = [Client(server.url, server.token, first_backoff=0.05, max_backoff=0.5,
                      heartbeat_interval=HEARTBEAT, ping_timeout=PING_TIMEOUT,
                      rng=random.Random(rng.random())) for _ in range(SUBSCRIBERS)]
    heard: list[list[bool]] = [[] for _ in clients]  # each client's store_available changes

    def listen(i):
        def on_change(c):
            if not heard[i] or heard[i][-1] != c.store_available:
                heard[i].append(c.store_available)
        return on_change

    for i, c in enumerate(clients):
        heard[i].append(c.store_available)
        c.add_listener(listen(i))
    apps = [App(c, run_id) for c in clients]
    probe = StatusProbe(server)
    try:
        for app in apps:
            await app.start()
        writer.go()
        point = max(c.last_seq(run_id) for c in clients) + rng.randint(300, 900)
        await asyncio.gather(*(c.wait_for(lambda c=c: c.last_seq(run_id) >= point, 60) for c in clients))
        at_stall = [c.last_seq(run_id) for c in clients]
        probe.start()
        with own_pg_cluster.frozen():
            t_freeze = time.monotonic()
            await asyncio.gather(*(c.wait_for(lambda c=c: not c.store_available, STALL_S)
                                   for c in clients))
            t_told = time.monotonic() - t_freeze
            down_since = clients[0].store_unavailable_since
            await asyncio.sleep(max(0.0, STALL_S - (time.monotonic() - t_freeze)))
            alive = [c.connection_state for c in clients]
        probe.stop()
        stall = probe.figures()
        t_thaw = time.monotonic()
        await asyncio.gather(*(c.wait_for(lambda c=c: c.store_available, 60) for c in clients))
        t_back = time.monotonic() - t_thaw
        writer.stop_emitting()
        # The run's own fate is the engine's (its process may not survive the stall yet:
        # Run.wait() in it reads the store); what is asserted is the server's behaviour
        # and that every client ends with exactly the log, whatever it holds.
        await wait_until_async(lambda: writer.proc.poll() is not None, 120, "the writer to exit")
        outcome = tail(writer.out, 1)
        snapshots = [await app.catch_up(60) for app in apps]
        stats = [c.stats for c in clients]
    finally:
        if probe.is_alive():
            probe.stop()
        for app in apps:
            await app.close()

    log = store.events(run_id).dicts()
    truth = store.snapshot(run_id)
    reports = [check(app.items, log, snap, truth) for app, snap in zip(apps, snapshots)]
    print(f"faults[store stall]: /api/status during the {STALL_S:g} s stall: {stall}")
    print(f"faults[store stall]: clients at seq {at_stall} when frozen; told 'store unavailable' "
          f"{t_told:.2f} s after the freeze (since {down_since}); 'available' {t_back:.2f} s "
          f"after the thaw; events={len(log)} run ended {truth['run']['state']} (writer: {outcome[-200:]!r}) "
          + "; ".join(f"{r.counts()} resyncs={r.resyncs} reconnects={s.reconnects}"
                      for r, s in zip(reports, stats)) + f" (seed={seed})")
    assert stall["failures"] == 0, stall
    assert stall["p99_ms"] < 100, stall
    assert alive == ["live"] * SUBSCRIBERS  # the sockets stayed open through the stall
    assert all(s.reconnects == 0 for s in stats), stats
    assert heard == [[True, False, True]] * SUBSCRIBERS, heard
    assert t_told < UNAVAILABLE_AFTER + 3
    for r in reports:
        assert_clean(r, f"seed={seed}")
        assert r.received == r.expected == len(log) - r.base
    assert all(c.protocol_errors == [] for c in clients)
    # the one error a server logs: that its store stopped answering (then that it answers)
    problems = spawn.server_problems()
    assert len(problems) == 1 and "the run store has not answered since" in problems[0], problems
