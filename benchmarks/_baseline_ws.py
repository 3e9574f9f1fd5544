"""The baseline of the server benchmarks: a plain Tornado WebSocket server, one frame per event.

No durable log, no cursors, no batching, no flow control: every event becomes its own
``{"type":"events","run_id":...,"events":[ONE ENVELOPE]}`` frame (the same frame shape
and envelope bytes as the real server's, so the same client code reads both), written
with ``write_message`` to every subscribed socket (TCP_NODELAY on). It is the design the
real server's batching is measured against.

Run as a script; it prints ``ready <port>`` on stdout once listening, and ``done <t>``
when a broadcast (modes ``paced``) has written its last frame. Modes:

``burst --events N``
    On each ``subscribe``, send that socket N events, one frame each, as fast as the
    socket takes them (waiting for the write of every 1000th frame, so at most ~1000
    frames are buffered). Each envelope's timestamp is the time its frame was written.
``paced --events N --rate R --clients C``
    Once C sockets have subscribed, broadcast N events to all of them, one frame per
    event per socket. Event i is *due* at ``t0 + i/R`` and carries that time as its
    timestamp; whenever the loop gets to run it writes every event that is due (a
    server that falls behind still publishes on schedule, like a real source would),
    so a latency measured against the timestamp includes the server's lag. ``--rate 0``
    writes all N back to back (yielding to the loop after each event's broadcast).
    ``--go-signal``: also wait for SIGUSR1 before starting.
``replay --db PATH``
    On each ``subscribe`` with ``after_seq``, read that run's events after it from the
    SQLite file (plain ``sqlite3``) and send them, one frame per event.

The event rows of ``burst`` and ``paced`` are built before the clock starts: an id
(uuid4), ``step_progress`` type and the ``data`` a ``ctx.progress`` call records.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import sys
import time
import uuid
from datetime import datetime, timezone

import orjson
import tornado.web
import tornado.websocket
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

RUN_ID = "baseline-run"


def iso(t: float) -> bytes:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds").encode()


def envelope(rid: bytes, seq: int, eid: str, etype: str, ts: bytes, data: bytes) -> bytes:
    return b"".join((b'{"run_id":', rid, b',"seq":', str(seq).encode(), b',"id":"', eid.encode(),
                     b'","event_type":"', etype.encode(), b'","timestamp":"', ts, b'","data":', data, b"}"))


def frame(rid: bytes, env: bytes) -> bytes:
    return b"".join((b'{"type":"events","run_id":', rid, b',"events":[', env, b"]}"))


class Source:
    """Pre-built event rows ``(seq, id, data)`` of one synthetic run."""

    def __init__(self, events: int):
        self.rid = orjson.dumps(RUN_ID)
        self.rows = [(seq, str(uuid.uuid4()),
                      orjson.dumps({"node_id": "emit0", "progress": (seq - 1) / events, "message": "working"}))
                     for seq in range(1, events + 1)]

    def frame(self, i: int, t: float) -> bytes:
        seq, eid, data = self.rows[i]
        return frame(self.rid, envelope(self.rid, seq, eid, "step_progress", iso(t), data))


class Server:
    def __init__(self, args):
        self.args = args
        self.subscribed: list["Socket"] = []
        self.source = Source(args.events) if args.mode in ("burst", "paced") else None
        self.db = sqlite3.connect(args.db) if args.mode == "replay" else None
        self.started = False
        self.go_signal = not args.go_signal  # with --go-signal: wait for SIGUSR1

    def on_subscribe(self, sock: "Socket", msg: dict) -> None:
        mode = self.args.mode
        # as the real server answers a subscribe with nothing to replay yet
        sock.write_message(frame(orjson.dumps(msg["run_id"]), b""))
        if mode == "burst":
            asyncio.ensure_future(self.burst(sock))
        elif mode == "paced":
            self.subscribed.append(sock)
            self.maybe_start()
        elif mode == "replay":
            asyncio.ensure_future(self.replay(sock, msg["run_id"], int(msg.get("after_seq") or 0)))

    def go(self) -> None:
        self.go_signal = True
        self.maybe_start()

    def maybe_start(self) -> None:
        if len(self.subscribed) >= self.args.clients and self.go_signal and not self.started:
            self.started = True
            asyncio.ensure_future(self.paced())

    async def burst(self, sock: "Socket") -> None:
        fut = None
        for i in range(len(self.source.rows)):
            try:
                fut = sock.write_message(self.source.frame(i, time.time()))
            except tornado.websocket.WebSocketClosedError:
                return
            if i % 1000 == 999:
                await fut

    async def paced(self) -> None:
        rate, socks = self.args.rate, list(self.subscribed)
        n = len(self.source.rows)
        t0 = time.time() + 0.2
        i = 0
        while i < n:
            if rate:
                due = t0 + i / rate
                wait = due - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                # everything due by now goes out, each event its own frame
                while i < n and t0 + i / rate <= time.time():
                    self._broadcast(socks, self.source.frame(i, t0 + i / rate))
                    i += 1
            else:
                self._broadcast(socks, self.source.frame(i, time.time()))
                i += 1
            await asyncio.sleep(0)
        print(f"done {time.time():.6f}", flush=True)

    @staticmethod
    def _broadcast(socks, data: bytes) -> None:
        for s in socks:
            if s.ws_connection is not None:
                try:
                    s.write_message(data)
                except tornado.websocket.WebSocketClosedError:
                    pass

    async def replay(self, sock: "Socket", run_id: str, after: int) -> None:
        rows = self.db.execute("SELECT seq, id, type, ts, data FROM events WHERE run_id=? AND seq>? "
                               "ORDER BY seq", (run_id, after)).fetchall()
        rid = orjson.dumps(run_id)
        fut = None
        for i, (seq, eid, etype, ts, data) in enumerate(rows):
            try:
                fut = sock.write_message(frame(rid, envelope(rid, seq, eid, etype, ts.encode(), data.encode())))
            except tornado.websocket.WebSocketClosedError:
                return
            if i % 1000 == 999:
                await fut


class Socket(tornado.websocket.WebSocketHandler):
    def initialize(self, server: Server) -> None:
        self.server = server

    def check_origin(self, origin: str) -> bool:
        return True

    def get_compression_options(self):
        return None

    def open(self) -> None:
        self.set_nodelay(True)
        self.write_message(b'{"type":"hello","protocol":1,"server_id":"baseline","heartbeat_interval":15.0}')

    def on_message(self, message) -> None:
        msg = orjson.loads(message)
        if msg.get("type") == "subscribe":
            self.server.on_subscribe(self, msg)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("burst", "paced", "replay"))
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--db")
    p.add_argument("--go-signal", action="store_true",
                   help="paced: start only once SIGUSR1 arrives (and the clients subscribed)")
    args = p.parse_args()

    async def serve() -> None:
        server = Server(args)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, server.go)
        app = tornado.web.Application([(r"/cmbagent/api/ws", Socket, {"server": server})],
                                      websocket_max_message_size=2**20)
        socks = bind_sockets(0, "127.0.0.1", backlog=2048)
        HTTPServer(app).add_sockets(socks)
        print(f"ready {socks[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
