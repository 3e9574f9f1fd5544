"""Workflows and a scripted fake server for the client tests."""

import json
import threading

import tornado.websocket

from engine import Workflow


def shutdown_executors(store) -> None:
    """Stop this store's executors still alive in this process (failed runs wait for a retry)."""
    from engine import runtime

    with runtime._lock:
        mine = {rid: ex for rid, ex in runtime._executors.items() if ex.store is store}
        for rid in mine:
            del runtime._executors[rid]
    for ex in mine.values():
        ex.stopped.set()
        ex.wake()
    for ex in mine.values():
        if ex._thread is not None:
            ex._thread.join(10)


def small_wf(name="client-small", fail=False):
    wf = Workflow(name)

    @wf.step()
    def a(ctx):
        for i in range(5):
            ctx.progress((i + 1) / 5, f"step {i + 1}")
        ctx.message("a is done", agent="tester")
        ctx.cost(model="m", input_tokens=10, output_tokens=5, usd=0.001)
        return 1

    @wf.step(deps=["a"])
    def b(ctx, a):
        if fail:
            raise RuntimeError("b fails on purpose")
        ctx.metric("chi2", 1.5)
        return a + 1

    @wf.step(deps=["a"])
    def c(a):
        return a * 3

    return wf


def gated_wf(gate: threading.Event, name="client-gated"):
    """a reports progress, waits for ``gate``, then b asks for approval."""
    wf = Workflow(name)

    @wf.step()
    def a(ctx):
        ctx.progress(0.5, "waiting for the gate")
        ctx.message("waiting", agent="tester")
        if not gate.wait(20):
            raise RuntimeError("the test never opened the gate")
        for i in range(20):
            ctx.progress((i + 1) / 20)
        ctx.cost(model="m", input_tokens=100, output_tokens=50, usd=0.01)
        return 1

    @wf.step(deps=["a"])
    def b(ctx, a):
        ok = ctx.approve("go on?")
        ctx.message(f"approved={ok}", agent="reviewer")
        return a + 1 if ok else None

    @wf.step(deps=["b"])
    def c(ctx, b):
        ctx.metric("value", float(b))
        return b

    return wf


# -- a scripted fake protocol server ---------------------------------------------------------


class FakeServer:
    """A WebSocket server the test scripts: records client frames, replies as told."""

    def __init__(self):
        self.conns = []  # handler per accepted connection, in order
        self.received = []  # (connection index, frame dict)
        self.pong = True
        self.heartbeat_interval = 15.0
        self.on_frame = None  # callable(handler, frame) -> None, extra behaviour
        self.port = None
        self.server = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/base/"

    def frames(self, ftype, conn=None):
        return [f for i, f in self.received if f["type"] == ftype and (conn is None or i == conn)]


class FakeHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, fake):
        self.fake = fake

    def open(self):
        self.index = len(self.fake.conns)
        self.fake.conns.append(self)
        self.write_message(json.dumps({"type": "hello", "protocol": 1, "server_id": "fake",
                                       "heartbeat_interval": self.fake.heartbeat_interval}))

    def on_message(self, message):
        frame = json.loads(message)
        self.fake.received.append((self.index, frame))
        if frame["type"] == "ping" and self.fake.pong:
            self.send({"type": "pong", "id": frame["id"], "server_time": "2024-01-01T00:00:00+00:00"})
        if self.fake.on_frame is not None:
            self.fake.on_frame(self, frame)

    def send(self, obj):
        try:
            self.write_message(json.dumps(obj))
        except tornado.websocket.WebSocketClosedError:
            pass


