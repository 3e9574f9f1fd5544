"""Fault 1: the client's socket is cut abruptly ~100 times while 10,000 events stream in.

The run executes in a writer subprocess, the server is a real `jupyter server`
subprocess, both on one SQLite file. The test process is only the client application:
it consumes ``client.events(run_id, markers=True)`` and, at 100 seeded-random points of
the stream, closes the TCP stream under the client's websocket (no close frame; about
half of them with a TCP reset). Every event must arrive exactly once, in order, and the
final state must equal the store's.
"""

from __future__ import annotations

import random
import time

from checker import assert_clean, check
from cmbagent_jupyter.client import Client
from fault_support import App, cut

EVENTS = 10_000
CUTS = 100
RATE = 1000  # events/s from the writer: ~10 s of streaming, a cut every ~0.1 s


async def test_socket_cut_100_times_during_10k_events(spawn, open_db, seed):
    rng = random.Random(seed)
    t_start = time.monotonic()
    server = spawn.server("server")
    writer = spawn.writer("--events", str(EVENTS), "--rate", str(RATE))
    await server.wait_ready()
    run_id = await writer.run_id()
    store = open_db()

    client = Client(server.url, server.token, first_backoff=0.05, max_backoff=1.0,
                    rng=random.Random(rng.random()))
    app = App(client, run_id)
    behind = []  # per cut: events in the log the client had not applied yet (replayed later)
    try:
        base = await app.start()
        points = sorted(rng.sample(range(base + 1, EVENTS), CUTS))
        resets = [rng.random() < 0.5 for _ in range(CUTS)]
        # about 1 cut in 5 as soon as the new connection is live: right after the client
        # resubscribed, while the server replays what the last connection missed
        at_hello = [i > 0 and rng.random() < 0.2 for i in range(CUTS)]

        t_stream = time.monotonic()
        writer.go()
        for i, (point, rst) in enumerate(zip(points, resets)):
            if at_hello[i]:
                point = 0
            # a new live connection (the i-th reconnection) that has applied up to the point
            await client.wait_for(lambda: client.stats.reconnects == i
                                  and client.connection_state == "live"
                                  and client.last_seq(run_id) >= point, 60)
            last_in_log = store.bounds(run_id)[1]
            assert cut(client, rst), f"cut {i}: no live socket to cut"
            behind.append(last_in_log - client.last_seq(run_id))
        result = await writer.finished(120)
        snapshot = await app.catch_up(60)
        await client.wait_for(lambda: client.stats.reconnects == CUTS
                              and client.connection_state == "live", 30)
        t_done = time.monotonic()
        stats = client.stats
    finally:
        await app.close()

    log = store.events(run_id).dicts()
    report = check(app.items, log, snapshot, store.snapshot(run_id))
    print(f"faults[socket cuts]: events={len(log)} cuts={CUTS} (rst={sum(resets)}, "
          f"at_hello={sum(at_hello)}) "
          f"{report.counts()} reconnects={stats.reconnects} delivered={report.received} "
          f"base={report.base} snapshot_equal={report.snapshot_equal} "
          f"gaps={stats.gaps} resets={stats.resets} dup_dropped={stats.duplicates_dropped} "
          f"cuts_with_client_behind={sum(1 for b in behind if b > 0)} "
          f"events_behind_at_cuts={sum(behind)} "
          f"in {t_done - t_stream:.1f} s (test {time.monotonic() - t_start:.1f} s, seed={seed})")
    assert result["events"] == len(log) == EVENTS
    assert_clean(report, f"seed={seed}")
    assert report.expected == report.received == EVENTS - report.base
    assert stats.reconnects == CUTS
    assert stats.gaps == stats.resets == stats.duplicates_dropped == 0, stats
    assert client.protocol_errors == []
    assert spawn.server_problems() == []
