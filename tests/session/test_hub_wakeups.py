"""The hub on a store that pushes notifications (PostgreSQL): no polling while idle,
woken at once by a commit."""

from __future__ import annotations

import asyncio
import time

import engine
from cmbagent_jupyter.gateway import StoreGateway
from cmbagent_jupyter.hub import EventHub
from support import finished_run


def test_an_idle_hub_does_not_poll_and_a_commit_wakes_it(pg_url):
    store = engine.open_store(pg_url)
    calls = []
    inner = store.changes_since

    def counted(cursor):
        calls.append(time.monotonic())
        return inner(cursor)

    store.changes_since = counted

    async def scenario():
        gateway = StoreGateway(store)
        hub = EventHub(gateway, tail_interval=0.002, reap_interval=30.0, recheck_interval=30.0)
        await hub.start()
        try:
            await asyncio.sleep(1.0)  # idle
            idle = len(calls)
            before = hub.cursor
            t0 = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, finished_run, store)
            while hub.cursor == before and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.01)
            return idle, hub.cursor != before
        finally:
            await hub.stop()
            gateway.close()

    try:
        idle, woken = asyncio.run(scenario())
    finally:
        del store.changes_since
    # Polling every 2 ms would be ~500 reads; pushed, the hub reads once at start and
    # once per wake-up (the listener's first connection wakes it once).
    assert idle <= 3, f"{idle} store reads in 1 s of idleness"
    assert woken, "the hub never saw the commit"
