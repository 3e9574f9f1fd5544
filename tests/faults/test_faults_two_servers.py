"""Fault 3: two server processes on one store; the client alternates between them.

``Client([url_a, url_b])`` goes to the next URL on every reconnection. The test cuts
the client's socket a few dozen times at seeded-random points while the run streams
(from a writer subprocess), so the client resumes its cursor alternately on server A
and server B; every event must still arrive exactly once, in order.
"""

from __future__ import annotations

import asyncio
import random
import time

from checker import assert_clean, check
from cmbagent_jupyter.client import Client
from fault_support import App, cut, free_port

SWITCHES = 40
RATE = 800  # events/s, until the test tells the writer to stop


async def test_client_alternates_between_two_servers(spawn, open_db, seed):
    rng = random.Random(seed)
    t_start = time.monotonic()
    server_a, server_b = spawn.server("server-a"), spawn.server("server-b")
    writer = spawn.writer("--until-stop", "--rate", str(RATE))
    await asyncio.gather(server_a.wait_ready(), server_b.wait_ready())
    run_id = await writer.run_id()
    store = open_db()

    client = Client([server_a.url, server_b.url], server_a.token, first_backoff=0.05,
                    max_backoff=1.0, rng=random.Random(rng.random()))
    app = App(client, run_id)
    served_by = []  # (url, server_id) of every connection, in order
    try:
        await app.start()
        t_stream = time.monotonic()
        writer.go()
        point = client.last_seq(run_id)
        for i in range(SWITCHES):
            point += rng.randint(10, 150)
            await client.wait_for(lambda: client.stats.reconnects == i
                                  and client.connection_state == "live"
                                  and client.last_seq(run_id) >= point, 60)
            served_by.append((client.url, client.server_id))
            assert cut(client, rst=rng.random() < 0.5), f"switch {i}: no live socket to cut"
        await client.wait_for(lambda: client.stats.reconnects == SWITCHES
                              and client.connection_state == "live", 30)
        served_by.append((client.url, client.server_id))
        point = client.last_seq(run_id) + 100
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
    urls = [u for u, _ in served_by]
    ids = [s for _, s in served_by]
    on_a = sum(1 for u in urls if u == server_a.url)
    print(f"faults[two servers]: events={len(log)} switches={SWITCHES} {report.counts()} "
          f"reconnects={stats.reconnects} connections A/B={on_a}/{len(urls) - on_a} "
          f"delivered={report.received} base={report.base} "
          f"snapshot_equal={report.snapshot_equal} gaps={stats.gaps} resets={stats.resets} "
          f"dup_dropped={stats.duplicates_dropped} in {t_done - t_stream:.1f} s "
          f"(test {time.monotonic() - t_start:.1f} s, seed={seed})")
    assert result["events"] == len(log)
    assert_clean(report, f"seed={seed}")
    assert report.received == report.expected == len(log) - report.base
    assert stats.reconnects == SWITCHES
    # it really alternated: A, B, A, B, ... and each URL is always the same server process
    assert urls == [(server_a.url, server_b.url)[j % 2] for j in range(SWITCHES + 1)]
    assert len(set(ids)) == 2 and all(ids[j] != ids[j + 1] for j in range(SWITCHES))
    assert stats.gaps == stats.resets == stats.duplicates_dropped == 0, stats
    assert client.protocol_errors == []
    assert spawn.server_problems() == []

    # failover: a dead URL in the list is skipped for the next one
    dead = f"http://127.0.0.1:{free_port()}/"
    async with Client([dead, server_b.url], server_b.token, first_backoff=0.05) as other:
        view = await other.wait_synced(run_id, 20)
        assert other.url == server_b.url and other.server_id == ids[1]
        assert other.last_error and other.stats.reconnects == 0
        assert view.snapshot() == store.snapshot(run_id)
        assert await other.server_last_seq(run_id) == len(log)  # REST goes to the live URL


def test_client_url_list():
    """The URL list: the first URL is used first, the rest in turn; a plain string is a list of one."""
    one = Client("http://h:1/base?token=t1")
    assert one.urls == ["http://h:1/base?token=t1"] and one.token == "t1"
    assert one.ws_url == "ws://h:1/base/cmbagent/api/ws"
    two = Client(["http://a:1/", "https://b:2/x/?token=tb"])
    assert two.url == "http://a:1/" and two.token is None
    two._use_url(two._url_index + 1)
    assert (two.url, two.base_url, two.ws_url, two.token) == (
        "https://b:2/x/?token=tb", "https://b:2/x/", "wss://b:2/x/cmbagent/api/ws", "tb")
    two._use_url(two._url_index + 1)
    assert two.url == "http://a:1/"
    assert Client(("http://a:1/", "http://b:2/"), "tok").token == "tok"
    try:
        Client([])
    except ValueError:
        pass
    else:
        raise AssertionError("an empty URL list must be refused")
