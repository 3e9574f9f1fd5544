"""Fault 4: the server the client is on freezes (SIGSTOP) mid-run: its sockets stay open
but nothing answers. The client's heartbeat must notice within its ping timeout, drop
the connection at once and fail over to the other server of the store, resuming by seq.
"""

from __future__ import annotations

import random
import time

from checker import assert_clean, check
from cmbagent_jupyter.client import Client
from fault_support import App

RATE = 500  # events/s, until the test tells the writer to stop
HEARTBEAT = 0.25  # s between the client's pings
PING_TIMEOUT = 1.0  # s a pong may take


async def test_frozen_server_is_detected_and_the_client_fails_over(spawn, open_db, seed):
    rng = random.Random(seed)
    t_start = time.monotonic()
    server_a, server_b = spawn.server("server-a"), spawn.server("server-b")
    writer = spawn.writer("--until-stop", "--rate", str(RATE))
    await server_a.wait_ready()
    await server_b.wait_ready()
    run_id = await writer.run_id()
    store = open_db()

    client = Client([server_a.url, server_b.url], server_a.token, first_backoff=0.05,
                    max_backoff=0.5, heartbeat_interval=HEARTBEAT, ping_timeout=PING_TIMEOUT,
                    connect_timeout=5,
                    rng=random.Random(rng.random()))
    app = App(client, run_id)
    frozen = None
    try:
        await app.start()
        writer.go()
        point = client.last_seq(run_id) + rng.randint(200, 800)
        await client.wait_for(lambda: client.connection_state == "live"
                              and client.last_seq(run_id) >= point, 60)
        reconnects = client.stats.reconnects  # 0 unless a pong was late under load
        frozen, other = ((server_a, server_b) if client.url == server_a.url
                         else (server_b, server_a))
        at_freeze = client.last_seq(run_id)
        frozen.freeze()
        t_freeze = time.monotonic()
        await client.wait_for(lambda: client.connection_state != "live", 30)
        t_detect = time.monotonic()
        reason = client.last_error
        await client.wait_for(lambda: client.stats.reconnects > reconnects
                              and client.connection_state == "live", 30)
        t_live = time.monotonic()
        on = client.url
        # the stream goes on from the other server while the first is still frozen
        point = client.last_seq(run_id) + 300
        await client.wait_for(lambda: client.last_seq(run_id) >= point, 60)
        frozen.thaw()
        writer.stop_emitting()
        result = await writer.finished(120)
        snapshot = await app.catch_up(60)
        t_done = time.monotonic()
        stats = client.stats
    finally:
        if frozen is not None:
            frozen.thaw()
        await app.close()

    log = store.events(run_id).dicts()
    report = check(app.items, log, snapshot, store.snapshot(run_id))
    print(f"faults[frozen server]: frozen at client seq {at_freeze}; dead connection dropped "
          f"after {t_detect - t_freeze:.2f} s (ping every {HEARTBEAT:g} s, timeout "
          f"{PING_TIMEOUT:g} s: {reason}), live on the other server after "
          f"{t_live - t_freeze:.2f} s")
    print(f"faults[frozen server]: events={len(log)} {report.counts()} "
          f"reconnects={stats.reconnects} delivered={report.received} base={report.base} "
          f"snapshot_equal={report.snapshot_equal} gaps={stats.gaps} resets={stats.resets} "
          f"dup_dropped={stats.duplicates_dropped} in {t_done - t_start:.1f} s (seed={seed})")
    assert result["events"] == len(log)
    assert_clean(report, f"seed={seed}")
    assert report.received == report.expected == len(log) - report.base
    assert on == other.url
    assert reason.startswith("no pong within")
    # the ping timeout, one ping interval and scheduling slack; tornado's closing
    # handshake alone would add 5 s (the client used to wait for it)
    assert t_detect - t_freeze < PING_TIMEOUT + HEARTBEAT + 2.5
    assert stats.gaps == stats.resets == stats.duplicates_dropped == 0, stats
    assert client.protocol_errors == []
    assert spawn.server_problems() == []
