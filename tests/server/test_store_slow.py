"""The server when its store is slow or a client does not read: the event loop never
waits on the store, REST answers 503 when the store takes too long, sockets stay open
and are told the store does not answer (and that it answers again), and a client too
slow even for its replies is closed with 1008 and the reason."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from tornado.httpclient import HTTPClientError

from server_support import finished_run


@pytest.fixture
def held(cmbagent_app, monkeypatch):
    """``held("snapshot")``: that store method waits (in its pool thread) until released."""
    gate = threading.Event()
    store = cmbagent_app.gateway.store

    def hold(name):
        real = getattr(store, name)

        def slow(*args):
            assert gate.wait(30), "never released"
            return real(*args)

        monkeypatch.setattr(store, name, slow)

    hold.release = gate.set
    yield hold
    gate.set()


@pytest.mark.cmbagent_app(store_timeout=0.5)
async def test_a_slow_store_gets_rest_a_503_and_never_stalls_the_server(store, jp_fetch, held):
    finished_run(store)
    held("runs")
    t0 = time.monotonic()
    request = asyncio.ensure_future(jp_fetch("cmbagent", "api", "runs"))
    await asyncio.sleep(0.1)
    # the event loop is free while the store call waits: Jupyter's own routes answer
    r = await jp_fetch("api", "status")
    assert r.code == 200 and time.monotonic() - t0 < 0.45
    with pytest.raises(HTTPClientError) as err:
        await request
    assert err.value.code == 503
    assert err.value.response.headers["Retry-After"].isdigit()
    assert json.loads(err.value.response.body)["message"] == "the run store did not answer within 0.5 s"
    held.release()
    r = await jp_fetch("cmbagent", "api", "runs")
    assert len(json.loads(r.body)["runs"]) == 1


@pytest.mark.cmbagent_app(store_unavailable_after=0.3)
async def test_sockets_are_told_when_the_store_stops_and_starts_answering(store, ws_connect, held):
    run = finished_run(store)
    ws = await ws_connect()
    await ws.expect("hello")
    other = await ws_connect()
    await other.expect("hello")
    held("snapshot")
    await ws.send({"type": "subscribe", "run_id": run.id})
    await ws.send({"type": "ping", "id": "during"})
    down = await ws.expect("store_status", timeout=5)
    assert down["available"] is False
    # the ping is answered at once (the server is alive); the subscribe waits its turn
    assert (await ws.expect("pong"))["id"] == "during"
    assert (await other.expect("store_status"))["available"] is False  # every socket hears it
    late = await ws_connect()  # a socket opened meanwhile is told after hello
    await late.expect("hello")
    assert (await late.expect("store_status"))["available"] is False
    held.release()
    # the news first (the gateway hears of the answer before the session gets it), then
    # the snapshot the subscribe waited for
    up = await ws.expect("store_status")
    assert up["available"] is True and up["since"] > down["since"]
    assert (await ws.expect("snapshot"))["seq"] == store.bounds(run.id)[1]
    assert (await other.expect("store_status"))["available"] is True


@pytest.mark.cmbagent_app(client_buffer_bytes=4096)
async def test_a_client_that_reads_not_even_its_replies_is_closed_with_1008(ws_connect, monkeypatch):
    from cmbagent_jupyter.handlers import WebSocket

    # A client that reads nothing: nothing the server hands its socket is ever written out.
    monkeypatch.setattr(WebSocket, "_written", lambda self, nbytes, fut: None)
    ws = await ws_connect()
    await ws.expect("hello")
    for i in range(2000):
        await ws.send({"type": "ping", "id": i})
    while (msg := await ws.recv(timeout=10)) is not None:
        assert msg["type"] == "pong"
    assert ws.conn.close_code == 1008
    assert ws.conn.close_reason.startswith("client too slow")
