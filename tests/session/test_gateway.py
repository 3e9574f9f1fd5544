"""The store gateway on its own (no server): calls off the event loop, availability news,
timeouts, retries of calls whose connection failed, and a store that is not open."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cmbagent_jupyter.gateway import StoreGateway, StoreUnavailable


class FakeStore:
    """A store whose one read can be held (a hung database) or fail to connect."""

    url = "fake://store"

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.refusals = 0  # how many next reads fail for want of a connection
        self.threads: set[str] = set()

    def transient(self, exc: Exception) -> bool:
        return isinstance(exc, ConnectionRefusedError)

    def read(self) -> int:
        self.threads.add(threading.current_thread().name)
        assert self.gate.wait(10)
        if self.refusals:
            self.refusals -= 1
            raise ConnectionRefusedError("the database refused the connection")
        return 42


def run(scenario):
    store = FakeStore()
    gateway = StoreGateway(store, threads=2, unavailable_after=0.2)
    heard: list[bool] = []
    gateway.add_listener(lambda available, since: heard.append(available))

    async def main():
        try:
            return await scenario(store, gateway)
        finally:
            store.gate.set()
            gateway.close()

    return asyncio.run(main()), heard, store


def test_a_hung_call_makes_the_store_unavailable_until_it_answers_exactly():
    async def scenario(store, gateway):
        store.gate.clear()
        call = asyncio.ensure_future(gateway.call(lambda s: s.read()))
        t0 = time.monotonic()
        while gateway.available:
            await asyncio.sleep(0.01)  # the loop is free all along
        waited = time.monotonic() - t0
        since = gateway.down_since
        store.gate.set()
        return await call, waited, since

    (answer, waited, since), heard, store = run(scenario)
    assert answer == 42
    assert 0.15 < waited < 1.0
    assert since is not None and since.endswith("+00:00")
    assert heard == [False, True]
    assert all(name.startswith("cmbagent-store") for name in store.threads)  # never the loop's


def test_a_timeout_gives_up_and_the_call_goes_on_without_anyone():
    async def scenario(store, gateway):
        store.gate.clear()
        with pytest.raises(StoreUnavailable, match="did not answer within 0.1 s"):
            await gateway.call(lambda s: s.read(), timeout=0.1)
        store.gate.set()
        return await gateway.call(lambda s: s.read(), timeout=5)

    answer, heard, _ = run(scenario)
    assert answer == 42


def test_a_refused_connection_is_waited_out_without_a_timeout_not_with_one():
    async def scenario(store, gateway):
        store.refusals = 1
        with pytest.raises(StoreUnavailable, match="unreachable: the database refused"):
            await gateway.call(lambda s: s.read(), timeout=5)
        assert not gateway.available
        store.refusals = 2
        return await gateway.call(lambda s: s.read())

    answer, heard, _ = run(scenario)
    assert answer == 42
    assert heard == [False, True]


def test_a_store_that_is_not_open_says_why():
    async def scenario():
        gateway = StoreGateway(threads=1)
        assert not gateway.open(lambda: (_ for _ in ()).throw(OSError("disk full")))
        try:
            with pytest.raises(StoreUnavailable, match="the run store is not open: OSError: disk full"):
                await gateway.call(lambda s: s.read())
            gateway.keep_opening(FakeStore, first_delay=0.05)
            while gateway.store is None:
                await asyncio.sleep(0.01)
            return await gateway.call(lambda s: s.read())
        finally:
            gateway.close()

    assert asyncio.run(scenario()) == 42
