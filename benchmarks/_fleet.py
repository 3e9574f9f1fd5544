"""The clients: ``Fleet``, processes each holding many WebSockets on one asyncio loop.

Tornado's client. Each socket subscribes, checks that seqs arrive contiguous (no gap, no
duplicate), and records the receive time (``time.time()``) of every events frame with
its first and last seq. ``parse=True`` parses each frame with orjson (as a real client
would); otherwise seqs are read with ``str.find``/``rfind``/``count`` (cheap, so the
figure is the server's, not the client's JSON parser).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from array import array
from typing import Optional

import numpy as np
import orjson

from _common import SPAWN
from _stats import pct


class _Sock:
    __slots__ = ("i", "parse", "keep", "capture", "tsmap", "cur", "snap", "ready", "gaps", "dups",
                 "bad", "resets", "frames", "events", "t", "first", "last", "raw", "closed", "fleet",
                 "done", "bytes")

    def __init__(self, i: int, conf: dict, fleet: "_ChildState"):
        self.i, self.fleet = i, fleet
        self.parse, self.keep = conf["parse"], conf["keep"]
        self.capture = conf["capture_ts"] and i == 0
        self.tsmap = fleet.tsmap
        self.cur: Optional[int] = conf.get("after_seq")
        self.snap = self.cur
        self.ready = False
        self.gaps = self.dups = self.bad = self.resets = self.frames = self.events = self.bytes = 0
        self.t, self.first, self.last = array("d"), array("q"), array("q")
        self.raw: list = []
        self.closed = False
        self.done = False

    def on_message(self, msg) -> None:
        if msg is None:
            self.closed = True
            return
        t = time.time()
        self.frames += 1
        self.bytes += len(msg)
        if self.keep:
            self.raw.append(msg)
        if self.parse:
            obj = orjson.loads(msg)
            typ = obj.get("type")
            if typ != "events":
                return self._other(typ, obj)
            evs = obj["events"]
            if not evs:
                self.ready = True
                return
            first, last, n = evs[0]["seq"], evs[-1]["seq"], len(evs)
            if self.capture:
                for ev in evs:
                    self.tsmap.setdefault(ev["seq"], ev["timestamp"])
        else:
            if not msg.startswith('{"type":"events"'):
                return self._other(None, orjson.loads(msg))
            a = msg.find('"seq":')
            if a < 0:
                self.ready = True
                return
            if self.capture and not self.events:  # the first events: their timestamps
                for ev in orjson.loads(msg)["events"]:
                    self.tsmap.setdefault(ev["seq"], ev["timestamp"])
            b = msg.rfind('"seq":')
            first = int(msg[a + 6:msg.index(",", a)])
            last = int(msg[b + 6:msg.index(",", b)])
            n = msg.count('"seq":')
        if n != last - first + 1:
            self.bad += 1
        if self.cur is not None and first != self.cur + 1:
            if first <= self.cur:
                self.dups += 1
            else:
                self.gaps += 1
        self.cur = last
        self.ready = True
        self.events += n
        self.t.append(t)
        self.first.append(first)
        self.last.append(last)
        fleet = self.fleet
        if fleet.expect is not None and not self.done and last >= fleet.expect:
            self.done = True
            fleet.sock_done()

    def _other(self, typ, obj) -> None:
        typ = typ or obj.get("type")
        if typ == "snapshot":
            self.cur = self.snap = obj["seq"]
            self.ready = True
        elif typ == "reset":
            self.resets += 1
            self.cur = None
        elif typ == "error":
            self.fleet.errors.append(obj)

    def result(self, size: Optional[int]) -> dict:
        out = {k: getattr(self, k) for k in ("snap", "cur", "gaps", "dups", "bad", "resets", "frames",
                                              "events", "closed", "bytes")}
        out["last_t"] = self.t[-1] if self.t else None
        if size is not None:
            recv = np.full(size, np.nan)
            t = np.frombuffer(self.t, dtype=np.float64)
            first = np.frombuffer(self.first, dtype=np.int64)
            last = np.frombuffer(self.last, dtype=np.int64)
            counts = last - first + 1
            if len(t) and (counts > 0).all():
                seqs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts - first, counts)
                ok = (seqs >= 0) & (seqs < size)
                recv[seqs[ok]] = np.repeat(t, counts)[ok]
            out["recv"] = recv
        if self.keep:
            out["raw"] = self.raw
        return out


class _ChildState:
    def __init__(self, conn) -> None:
        self.conn = conn
        self.tsmap: dict[int, str] = {}
        self.expect: Optional[int] = None
        self.socks: list[_Sock] = []
        self.done_count = 0
        self.errors: list = []

    def sock_done(self) -> None:
        self.done_count += 1
        if self.done_count == len(self.socks):
            self.conn.send(("done", time.time()))


def _client_main(conf: dict, conn) -> None:
    try:
        asyncio.run(_client_loop(conf, conn))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


async def _client_loop(conf: dict, conn) -> None:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    state = _ChildState(conn)
    state.expect = conf.get("expect")
    state.socks = [_Sock(i, conf, state) for i in range(conf["n"])]
    sub = {"type": "subscribe", "run_id": conf["run_id"]}
    if conf.get("after_seq") is not None:
        sub["after_seq"] = conf["after_seq"]
    sub_frame = orjson.dumps(sub).decode()
    sem = asyncio.Semaphore(16)
    conns = {}

    async def connect(s: _Sock) -> None:
        async with sem:
            for attempt in range(8):
                try:
                    req = HTTPRequest(conf["url"], headers=conf["headers"], connect_timeout=60,
                                      request_timeout=60)
                    conns[s.i] = ws = await websocket_connect(req, on_message_callback=s.on_message,
                                                              max_message_size=1 << 30)
                    break
                except Exception:
                    if attempt == 7:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            if not conf.get("defer_subscribe"):
                ws.write_message(sub_frame)

    t = time.perf_counter()
    await asyncio.gather(*(connect(s) for s in state.socks))
    connected = time.perf_counter() - t
    loop = asyncio.get_running_loop()
    lags = array("d")

    async def lag_monitor() -> None:  # how late this process's loop runs a 10 ms timer
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t0 - 0.01)

    monitor = asyncio.ensure_future(lag_monitor())
    cmds: asyncio.Queue = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: cmds.put_nowait(conn.recv()))
    if conf.get("defer_subscribe"):  # the parent times the subscribe itself (replay)
        conn.send(("connected", connected))
        await cmds.get()
        t_sub = time.time()
        for ws in conns.values():
            ws.write_message(sub_frame)
    else:
        t_sub = None
        while not all(s.ready for s in state.socks):
            await asyncio.sleep(0.005)
        conn.send(("ready", {"connect_s": connected}))
    while True:
        cmd = await cmds.get()
        if cmd[0] == "expect":
            state.expect = cmd[1]
            for s in state.socks:
                if not s.done and s.cur is not None and s.cur >= state.expect:
                    s.done = True
                    state.sock_done()
        elif cmd[0] == "stop":
            monitor.cancel()
            loop.remove_reader(conn.fileno())
            for ws in conns.values():
                ws.close()
            result = {"socks": [s.result(cmd[1]) for s in state.socks], "tsmap": state.tsmap,
                      "errors": state.errors[:20], "t_sub": t_sub, "lags": lags}
            conn.send(("result", result))
            return


class Fleet:
    """``procs`` client processes holding ``total`` sockets between them, subscribed to one run.

    ``after_seq`` None: subscribe from a snapshot; else replay after it. ``expect``: the
    last seq to wait for (``wait_done``), if known up front (else ``expect()`` later).
    ``url`` and ``headers`` may be lists (several servers): process i connects to the
    i-th modulo their length.
    """

    def __init__(self, url: str, headers: Optional[dict], run_id: str, total: int, procs: int = 1, *,
                 after_seq: Optional[int] = None, parse: bool = False, keep: bool = False,
                 capture_ts: bool = False, expect: Optional[int] = None, defer_subscribe: bool = False):
        procs = max(1, min(procs, total))
        urls = url if isinstance(url, list) else [url]
        headers = headers if isinstance(headers, list) else [headers]
        self.conns, self.procs = [], []
        for p in range(procs):
            n = total // procs + (1 if p < total % procs else 0)
            conf = {"url": urls[p % len(urls)], "headers": headers[p % len(headers)] or {}, "run_id": run_id,
                    "n": n, "after_seq": after_seq, "parse": parse, "keep": keep, "capture_ts": capture_ts,
                    "expect": expect, "defer_subscribe": defer_subscribe}
            parent, child = SPAWN.Pipe()
            proc = SPAWN.Process(target=_client_main, args=(conf, child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.total = total
        self.done_at: list[float] = []

    def _recv(self, conn, timeout: float, kinds: tuple):
        if not conn.poll(timeout):
            raise TimeoutError(f"client process: no {'/'.join(kinds)} within {timeout} s")
        kind, value = conn.recv()
        if kind == "error":
            raise RuntimeError("client process failed:\n" + value)
        if kind not in kinds:
            raise RuntimeError(f"client process: expected {kinds}, got {kind}")
        return kind, value

    def wait_ready(self, timeout: float = 300.0, kind: str = "ready") -> list:
        deadline = time.monotonic() + timeout
        return [self._recv(c, max(0.0, deadline - time.monotonic()), (kind,))[1] for c in self.conns]

    def start_subscribe(self) -> None:
        for c in self.conns:
            c.send(("go",))

    def expect(self, last_seq: int) -> None:
        for c in self.conns:
            c.send(("expect", last_seq))

    def wait_done(self, timeout: float) -> bool:
        """True if every socket received the expected seq within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        for c in self.conns[len(self.done_at):]:
            left = deadline - time.monotonic()
            if left <= 0 or not c.poll(left):
                return False
            self.done_at.append(self._recv(c, 0, ("done",))[1])
        return True

    def stop(self, size: Optional[int], timeout: float = 120.0) -> dict:
        """Close every socket; per-socket results (``recv``: per-seq receive times if ``size``)."""
        for c in self.conns:
            c.send(("stop", size))
        socks, tsmap, errors, t_sub, lags = [], {}, [], [], []
        for c in self.conns:
            while True:
                kind, value = self._recv(c, timeout, ("result", "done"))
                if kind == "result":
                    break
            socks.extend(value["socks"])
            for k, v in value["tsmap"].items():
                tsmap.setdefault(k, v)
            errors.extend(value["errors"])
            t_sub.append(value["t_sub"])
            lags.append(np.frombuffer(value["lags"], dtype=np.float64))
        for p in self.procs:
            p.join(30)
        lags = np.concatenate(lags) * 1000.0
        return {"socks": socks, "tsmap": tsmap, "errors": errors, "t_sub": t_sub,
                "loop_lag_ms": {"p50": pct(lags, 50), "p99": pct(lags, 99), "max": float(lags.max()) if lags.size else 0.0}}

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the client processes have used so far."""
        import psutil

        total = 0.0
        for p in self.procs:
            try:
                t = psutil.Process(p.pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
