"""Fault 2: the Jupyter server process is SIGKILLed and restarted on the same port mid-run.

The run executes in a writer subprocess, so it keeps committing events while no server
is up. The client is left alone: it must notice, retry on its own (backoff capped at
0.5 s), reconnect to the new server process (a new server_id) and resume by seq.
"""

from __future__ import annotations

import random
import time

from checker import assert_clean, check
from cmbagent_jupyter.client import Client
from fault_support import App
from support import wait_until_async

KILLS = 2
RATE = 500  # events/s, until the test tells the writer to stop
WHILE_DOWN = 300  # events the run must commit while the server is down, before the restart


async def test_server_killed_and_restarted_mid_run(spawn, open_db, seed):
    rng = random.Random(seed)
    t_start = time.monotonic()
    server = spawn.server("server")
    writer = spawn.writer("--until-stop", "--rate", str(RATE))
    await server.wait_ready()
    run_id = await writer.run_id()
    store = open_db()

    client = Client(server.url, server.token, first_backoff=0.05, max_backoff=0.5,
                    rng=random.Random(rng.random()))
    app = App(client, run_id)
    server_ids, downs = [], []
    try:
        await app.start()
        server_ids.append(client.server_id)
        writer.go()
        point = client.last_seq(run_id)
        for k in range(KILLS):
            point += rng.randint(300, 1000)
            await client.wait_for(lambda: client.stats.reconnects == k
                                  and client.connection_state == "live"
                                  and client.last_seq(run_id) >= point, 60)
            client_at_kill = client.last_seq(run_id)
            log_at_kill = store.bounds(run_id)[1]
            assert store.run_doc(run_id)["state"] == "executing"

            server.kill()
            t_kill = time.monotonic()
            await client.wait_for(lambda: client.connection_state != "live", 10)
            # the run goes on without any server
            await wait_until_async(lambda: store.bounds(run_id)[1] >= log_at_kill + WHILE_DOWN, 30,
                                   f"{WHILE_DOWN} events committed while the server is down")
            assert client.stats.reconnects == k and client.connection_state != "live"

            server.start()  # same port, same store, a new process
            started = await server.wait_ready()
            t_up = time.monotonic()
            log_at_restart = store.bounds(run_id)[1]
            await client.wait_for(lambda: client.stats.reconnects == k + 1
                                  and client.connection_state == "live", 30)
            t_live = time.monotonic()
            server_ids.append(client.server_id)
            downs.append({"client_at_kill": client_at_kill, "log_at_kill": log_at_kill,
                          "log_at_restart": log_at_restart, "down_s": t_up - t_kill,
                          "start_s": started, "reconnect_s": t_live - t_up,
                          "error": client.last_error})
        # the stream goes on over the new connection, then the run ends
        point = client.last_seq(run_id) + 200
        await client.wait_for(lambda: client.last_seq(run_id) >= point, 60)
        writer.stop_emitting()
        result = await writer.finished(120)
        snapshot = await app.catch_up(60)
        t_done = time.monotonic()
        stats = client.stats
    finally:
        await app.close()

    log = store.events(run_id).dicts()
    report = check(app.items, log, snapshot, store.snapshot(run_id))
    for k, d in enumerate(downs):
        print(f"faults[server kill {k + 1}]: killed at client seq {d['client_at_kill']} "
              f"(log {d['log_at_kill']}), log at restart {d['log_at_restart']} "
              f"(+{d['log_at_restart'] - d['log_at_kill']} while down), down {d['down_s']:.1f} s "
              f"(restart took {d['start_s']:.1f} s), client live again {d['reconnect_s']:.2f} s "
              f"after the server was ready; last error: {d['error']}")
    print(f"faults[server kill]: events={len(log)} kills={KILLS} {report.counts()} "
          f"reconnects={stats.reconnects} delivered={report.received} base={report.base} "
          f"snapshot_equal={report.snapshot_equal} gaps={stats.gaps} resets={stats.resets} "
          f"dup_dropped={stats.duplicates_dropped} server_ids={len(set(server_ids))} "
          f"in {t_done - t_start:.1f} s (seed={seed})")
    assert result["events"] == len(log)
    assert_clean(report, f"seed={seed}")
    assert report.received == report.expected == len(log) - report.base
    assert stats.reconnects == KILLS
    assert len(set(server_ids)) == KILLS + 1  # a new server process each time
    assert stats.gaps == stats.resets == stats.duplicates_dropped == 0, stats
    assert client.protocol_errors == []
    assert spawn.server_problems() == []
