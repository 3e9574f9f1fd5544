"""What the server benchmarks (server_*.py) share, on top of ``_common``.

- ``JupyterServer``: a real ``jupyter server`` subprocess with the cmbagent_jupyter
  extension, a token, and ``CMBAGENT_DB_URL`` pointing at the benchmark's SQLite file
  (or PostgreSQL database).
- ``BaselineServer``: ``_baseline_ws.py`` (a plain Tornado server, one frame per event)
  as a subprocess.
- ``Writer``: a process running the engine: one workflow whose step waits for a gate,
  then calls ``ctx.progress`` N times (paced, or as fast as it can). It records the wall
  time at which each of its commits returned (``store.apply_commits`` wrapped in that
  process only), so latencies can be measured from commit. ``Replayer`` (with
  ``hold_back``): commits a finished run's held-back events again, in batches.
- ``Fleet``: client processes, each holding many WebSockets on one asyncio loop
  (tornado's client). Each socket subscribes, checks that seqs arrive contiguous (no gap,
  no duplicate), and records the receive time (``time.time()``) of every events frame
  with its first and last seq. ``parse=True`` parses each frame with orjson (as a real
  client would); otherwise seqs are read with ``str.find``/``rfind``/``count`` (cheap,
  so the figure is the server's, not the client's JSON parser).
- ``Profiler``: py-spy on the server process, summarised on stderr.
- ``paced_engine`` / ``paced_baseline``: the latency and fan-out runs (server_latency.py,
  server_fanout.py).

All times compared across processes are ``time.time()`` on one machine.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from array import array
from collections import Counter
from datetime import datetime
from typing import Any, Optional

import _common  # noqa: F401  (puts the engine on sys.path)
import numpy as np
import orjson

from _common import note

HERE = os.path.dirname(os.path.abspath(__file__))
MP = mp.get_context("spawn")


# -- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sqlite_url(path: str) -> str:
    return "sqlite:///" + os.path.abspath(path).lstrip("/")


def is_postgres(db: str) -> bool:
    """Whether a benchmark's ``db`` is a PostgreSQL URL (else it is a SQLite file's path)."""
    return db.startswith(("postgresql://", "postgres://"))


class JupyterServer:
    """``python -m jupyter_server`` with the extension, on 127.0.0.1, token auth; ``db_path``
    a SQLite file or a PostgreSQL URL."""

    def __init__(self, db_path: str, workdir: str, extra_args: tuple = ()):
        self.port = free_port()
        self.token = uuid.uuid4().hex
        for sub in ("config", "data", "runtime", "root"):
            os.makedirs(os.path.join(workdir, "jupyter-" + sub), exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE")}
        env.update(JUPYTER_CONFIG_DIR=os.path.join(workdir, "jupyter-config"),
                   JUPYTER_DATA_DIR=os.path.join(workdir, "jupyter-data"),
                   JUPYTER_RUNTIME_DIR=os.path.join(workdir, "jupyter-runtime"),
                   CMBAGENT_DB_URL=db_path if is_postgres(db_path) else sqlite_url(db_path))
        cmd = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
               f"--port={self.port}", "--ServerApp.port_retries=0", "--ip=127.0.0.1",
               f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={os.path.join(workdir, 'jupyter-root')}",
               "--ServerApp.jpserver_extensions=cmbagent_jupyter=True", *extra_args]
        self.log_path = os.path.join(workdir, "jupyter-server.log")
        self._log = open(self.log_path, "wb")
        t = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir)
        self.pid = self.proc.pid
        self._wait_ready(90.0)
        note(f"jupyter server pid {self.pid} on port {self.port} ready in {time.perf_counter() - t:.1f} s"
             f" (log: {self.log_path})")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/cmbagent/api/ws"

    @property
    def headers(self) -> dict:
        return {"Authorization": f"token {self.token}"}

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/cmbagent/api/runs"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited ({self.proc.returncode}); see {self.log_path}:\n"
                                   + open(self.log_path, errors="replace").read()[-3000:])
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=self.headers), timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter server not ready after {timeout} s; see {self.log_path}")
            time.sleep(0.2)

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class BaselineServer:
    """``_baseline_ws.py MODE ...`` as a subprocess (see its docstring)."""

    def __init__(self, mode: str, *args: str):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "_baseline_ws.py"), mode, *args],
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            self.stop()
            raise RuntimeError(f"baseline server did not start: {line}")
        self.port = int(line[1])
        self.token = None
        self.done_at: Optional[float] = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            parts = line.split()
            if parts and parts[0] == "done":
                self.done_at = float(parts[1])

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/cmbagent/api/ws"

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RssSampler:
    """Samples a process's RSS every ``interval`` s in a thread: ``peak`` and ``samples``."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self._p = psutil.Process(pid)
        self.peak = self._p.memory_info().rss
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._interval = interval
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                rss = self._p.memory_info().rss
            except Exception:
                return
            self.samples.append((time.time(), rss))
            self.peak = max(self.peak, rss)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


# -- the engine side: a writer process ---------------------------------------------------------


def _writer_main(db_path: str, events: int, rate: float, gate, out, name: str, timeout: float) -> None:
    try:
        from _common import open_store, wait_stopped
        from engine import Workflow

        store = open_store(db_path)
        commits: list[tuple[int, int, float]] = []
        orig = store.apply_commits

        def timed_apply(cms):  # the commit returned: visible to every other process
            result = orig(cms)
            t = time.time()
            for cm in cms:
                if cm.events:
                    commits.append((cm.events[0]["seq"], cm.events[-1]["seq"], t))
            return result

        store.apply_commits = timed_apply
        wf = Workflow(name)

        @wf.step()
        def emit(ctx):
            out.put(("waiting", None))
            if not gate.wait(600):
                raise RuntimeError("gate never opened")
            t0 = time.time()
            for i in range(events):
                if rate:
                    wait = t0 + i / rate - time.time()
                    if wait > 0:
                        time.sleep(wait)
                ctx.progress(i / events, "working")
            return None

        run = wf.start(store=store)
        out.put(("run", run.id))
        state = run.wait(timeout)
        wait_stopped(run)
        out.put(("done", {"state": str(getattr(state, "value", state)), "commits": commits}))
        store.close()
    except BaseException:
        out.put(("error", traceback.format_exc()))


class Writer:
    """The engine in its own process; ``open_gate()`` starts the step's progress loop."""

    def __init__(self, db_path: str, events: int, rate: float = 0.0, name: str = "bench-server",
                 timeout: float = 600.0):
        self.gate = MP.Event()
        self.q = MP.Queue()
        self.proc = MP.Process(target=_writer_main, args=(db_path, events, rate, self.gate, self.q, name,
                                                          timeout), daemon=True)
        self.proc.start()
        got = dict(self._expect(("run", "waiting"), 120) for _ in range(2))
        self.run_id = got["run"]
        self.gate_opened_at: Optional[float] = None

    def _expect(self, kinds, timeout: float):
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        kind_got, value = self.q.get(timeout=timeout)
        if kind_got == "error":
            raise RuntimeError("writer failed:\n" + value)
        if kind_got not in kinds:
            raise RuntimeError(f"writer: expected {kinds}, got {kind_got}")
        return kind_got, value

    def open_gate(self) -> None:
        self.gate_opened_at = time.time()
        self.gate.set()

    def result(self, timeout: float = 600.0) -> dict:
        out = self._expect("done", timeout)[1]
        self.proc.join(30)
        return out


def _replayer_main(db_path: str, run_id: str, after: int, last: int, batch: int, gate, out) -> None:
    try:
        from _common import raw_connection

        conn = raw_connection(db_path)
        conn.execute("PRAGMA busy_timeout=60000")
        out.put(("waiting", None))
        gate.wait(600)
        commits = []
        for a in range(after + 1, last + 1, batch):
            b = min(a + batch - 1, last)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO events(run_id, seq, id, type, ts, data) SELECT run_id, seq, id, type,"
                         " ts, data FROM held WHERE run_id=? AND seq BETWEEN ? AND ? ORDER BY seq",
                         (run_id, a, b))
            conn.execute("UPDATE runs SET last_seq=? WHERE id=?", (b, run_id))
            conn.execute("COMMIT")
            commits.append((a, b, time.time()))
        conn.close()
        out.put(("done", {"commits": commits}))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def hold_back(db_path: str, run_id: str) -> tuple[int, int]:
    """Move a finished run's events from its first ``step_progress`` on into table ``held``,
    as if they were not written yet; return ``(after, last)``: the seq the log now ends at
    and the seq it ended at."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS held(run_id TEXT, seq INTEGER, id TEXT, type TEXT, ts TEXT,"
                 " data TEXT)")
    conn.execute("CREATE INDEX IF NOT EXISTS held_run_seq ON held(run_id, seq)")
    after = conn.execute("SELECT MIN(seq) - 1 FROM events WHERE run_id=? AND type='step_progress'",
                         (run_id,)).fetchone()[0]
    last = conn.execute("SELECT last_seq FROM runs WHERE id=?", (run_id,)).fetchone()[0]
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO held SELECT run_id, seq, id, type, ts, data FROM events WHERE run_id=? AND seq>?",
                 (run_id, after))
    conn.execute("DELETE FROM events WHERE run_id=? AND seq>?", (run_id, after))
    conn.execute("UPDATE runs SET last_seq=? WHERE id=?", (after, run_id))
    conn.execute("COMMIT")
    conn.close()
    return after, last


class Replayer(Writer):
    """Commits a held-back run's events again (``hold_back``), ``batch`` rows per transaction,
    as fast as SQLite takes them, from its own process, once the gate opens."""

    def __init__(self, db_path: str, run_id: str, after: int, last: int, batch: int = 2000):
        self.gate = MP.Event()
        self.q = MP.Queue()
        self.proc = MP.Process(target=_replayer_main, args=(db_path, run_id, after, last, batch, self.gate,
                                                            self.q), daemon=True)
        self.proc.start()
        self.run_id = run_id
        self._expect("waiting", 120)
        self.gate_opened_at = None


def commit_times(commits: list[tuple[int, int, float]], size: int) -> np.ndarray:
    """Per seq (index = seq), the time its commit returned (NaN if not committed by the writer)."""
    out = np.full(size, np.nan)
    for first, last, t in commits:
        out[first:last + 1] = t
    return out


def event_table(db_path: str, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(record_ts, types)`` indexed by seq: each event's timestamp (epoch s) and type."""
    if is_postgres(db_path):
        import psycopg

        with psycopg.connect(db_path) as conn:
            rows = conn.execute("SELECT seq, ts, type FROM events WHERE run_id=%s ORDER BY seq",
                                (run_id,)).fetchall()
    else:
        conn = sqlite3.connect(db_path)
        rows = conn.execute("SELECT seq, ts, type FROM events WHERE run_id=? ORDER BY seq", (run_id,)).fetchall()
        conn.close()
    size = rows[-1][0] + 1
    ts = np.full(size, np.nan)
    types = np.empty(size, dtype=object)
    for seq, t, typ in rows:
        ts[seq] = datetime.fromisoformat(t).timestamp()
        types[seq] = typ
    return ts, types


# -- the client side: processes of many sockets ---------------------------------------------------


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
            parent, child = MP.Pipe()
            proc = MP.Process(target=_client_main, args=(conf, child), daemon=True)
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

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()


def tsmap_array(tsmap: dict, size: int) -> np.ndarray:
    out = np.full(size, np.nan)
    for seq, ts in tsmap.items():
        if 0 <= seq < size:
            out[seq] = datetime.fromisoformat(ts).timestamp()
    return out


def delivery_summary(socks: list[dict], last_seq: int) -> dict:
    """Totals over sockets: events received, sockets complete (reached ``last_seq``), anomalies."""
    return {
        "events": sum(s["events"] for s in socks),
        "complete": sum(1 for s in socks if s["cur"] is not None and s["cur"] >= last_seq),
        "gaps": sum(s["gaps"] for s in socks), "dups": sum(s["dups"] for s in socks),
        "bad": sum(s["bad"] for s in socks), "resets": sum(s["resets"] for s in socks),
        "frames": sum(s["frames"] for s in socks), "bytes": sum(s["bytes"] for s in socks),
    }


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


# -- profiling the server process -----------------------------------------------------------------


def py_spy() -> Optional[str]:
    """The py-spy executable: $PY_SPY, on PATH, or pip-installed under /tmp/pyspy."""
    for cand in (os.environ.get("PY_SPY"), shutil.which("py-spy"), "/tmp/pyspy/bin/py-spy"):
        if cand and os.path.exists(cand):
            return cand
    return None


class Profiler:
    """``py-spy record`` of a process (all threads, active samples only) while the block runs.

    Usage: ``with Profiler(pid, enabled, "title"): ...``; the summary goes to stderr: own
    (leaf) time per function, and inclusive time per function.
    """

    def __init__(self, pid: int, enabled: bool, title: str, rate: int = 200):
        self.pid, self.enabled, self.title, self.rate = pid, enabled, title, rate
        self.proc = None

    def __enter__(self) -> "Profiler":
        if not self.enabled:
            return self
        exe = py_spy()
        if exe is None:
            note("--profile: py-spy not found (pip install --target /tmp/pyspy py-spy, or set $PY_SPY)")
            self.enabled = False
            return self
        self.out = f"/tmp/pyspy-{self.pid}-{time.time_ns()}.txt"
        self.proc = subprocess.Popen([exe, "record", "--pid", str(self.pid), "--rate", str(self.rate),
                                      "--format", "raw", "-o", self.out,
                                      # native frames need py-spy to pause the process per sample
                                      *(["--native"] if os.environ.get("PY_SPY_NATIVE") else ["--nonblocking"])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # py-spy attaches
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled or self.proc is None:
            return
        self.proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            err = b""
        if not os.path.exists(self.out):
            note(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
            return
        note(summarise_raw(self.out, self.title))
        os.unlink(self.out)


def _fn(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, loc = frame.partition(" (")
    path = loc.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def summarise_raw(path: str, title: str, top: int = 25) -> str:
    own: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = [_fn(fr) for fr in stack.split(";") if fr and not fr.startswith("process ")
                      and not fr.startswith("thread ")]
            if not frames:
                continue
            total += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    lines = [f"\n===== py-spy: {title} ({total} active samples, all threads) ====="]
    lines.append("-- own time --")
    lines += [f"{100 * n / total:6.1f}%  {fr}" for fr, n in own.most_common(top)]
    lines.append("-- inclusive --")
    lines += [f"{100 * n / total:6.1f}%  {fr}" for fr, n in incl.most_common(top)]
    return "\n".join(lines)


# -- paced runs: latency and fan-out --------------------------------------------------------------


def _latency_stats(recv: np.ndarray, origin: np.ndarray, seqs: np.ndarray) -> dict:
    """Over every (socket, seq in ``seqs``): deliveries, and latency percentiles in ms."""
    sub = recv[:, seqs]
    got = ~np.isnan(sub)
    lat = (sub - origin[seqs])[got] * 1000.0
    return {"expected": sub.size, "delivered": int(got.sum()),
            "p50": pct(lat, 50), "p90": pct(lat, 90), "p95": pct(lat, 95), "p99": pct(lat, 99), "max": float(lat.max()) if lat.size else float("nan")}


def paced_engine(server: JupyterServer, db: str, clients: int, procs: int, rate: float, seconds: float,
                 grace: float, name: str, profile: bool = False) -> dict:
    """The engine writes ``rate`` progress events/s for ``seconds`` (its own process) while
    ``clients`` sockets follow the run; latencies from commit and from the event timestamp."""
    n = int(rate * seconds)
    writer = Writer(db, n, rate, name=name)
    fleet = Fleet(server.ws_url, server.headers, writer.run_id, clients, procs, parse=True)
    try:
        t = time.perf_counter()
        ready = fleet.wait_ready(600)
        note(f"{name}: {clients} sockets in {len(fleet.procs)} client processes subscribed in"
             f" {time.perf_counter() - t:.1f} s (connect {max(r['connect_s'] for r in ready):.1f} s)")
        cpu0, rss0 = server.cpu_seconds(), server.rss()
        with Profiler(server.pid, profile, f"server: {name}"):
            writer.open_gate()
            out = writer.result(seconds + 300)
            ts, types = event_table(db, writer.run_id)
            last = len(ts) - 1
            fleet.expect(last)
            t_end = time.time()
            complete = fleet.wait_done(grace)
        cpu = server.cpu_seconds() - cpu0
        res = fleet.stop(last + 1)
    finally:
        fleet.kill()
    waited = time.time() - t_end
    recv = np.vstack([s["recv"] for s in res["socks"]])
    prog = np.nonzero(types == "step_progress")[0]
    commit = commit_times(out["commits"], last + 1)
    summary = delivery_summary(res["socks"], last)
    stats = {"commit": _latency_stats(recv, commit, prog), "record": _latency_stats(recv, ts, prog),
             "summary": summary, "complete": complete, "events": len(prog),
             "server_cpu_share": cpu / (seconds + waited), "errors": res["errors"],
             "client_loop_lag_ms": res["loop_lag_ms"]}
    c, r = stats["commit"], stats["record"]
    note(f"{name}: {len(prog)} events x {clients} sockets: delivered {c['delivered']}/{c['expected']}"
         f" (all by the end: {complete}); commit->receipt p50 {c['p50']:.1f} p90 {c['p90']:.1f}"
         f" p99 {c['p99']:.1f} max {c['max']:.1f} ms; record->receipt p50 {r['p50']:.1f} p99 {r['p99']:.1f} ms;"
         f" server CPU {100 * stats['server_cpu_share']:.0f}% of a core; server RSS"
         f" {rss0 / 2**20:.0f} -> {server.rss() / 2**20:.0f} MB; frames {summary['frames']},"
         f" gaps {summary['gaps']} dups {summary['dups']} resets {summary['resets']}; run {out['state']};"
         f" client loops late by p50 {res['loop_lag_ms']['p50']:.1f} p99 {res['loop_lag_ms']['p99']:.1f} ms")
    if res["errors"]:
        note(f"{name}: error frames: {res['errors'][:3]}")
    return stats


#: What ``paced_baseline`` returns when the baseline is skipped (``--no-baseline``).
NO_BASELINE = {"due": {"expected": 1, "delivered": 0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0,
                        "max": 0.0}}


def paced_baseline(clients: int, procs: int, rate: float, seconds: float, grace: float, name: str) -> dict:
    """``_baseline_ws.py paced``: the same load, one frame per event per socket; latency from
    each event's due time (its timestamp)."""
    n = int(rate * seconds)
    base = BaselineServer("paced", "--events", str(n), "--rate", str(rate), "--clients", str(clients))
    fleet = Fleet(base.ws_url, None, "baseline-run", clients, procs, after_seq=0, parse=True,
                  capture_ts=True, expect=n)
    try:
        t = time.perf_counter()
        fleet.wait_ready(600)
        note(f"{name}: {clients} sockets subscribed in {time.perf_counter() - t:.1f} s")
        rss0 = base.rss()
        sampler = RssSampler(base.pid, 0.2)
        complete = fleet.wait_done(seconds + 2 + grace)
        sampler.stop()
        res = fleet.stop(n + 1)
    finally:
        fleet.kill()
        base.stop()
    recv = np.vstack([s["recv"] for s in res["socks"]])
    ts = tsmap_array(res["tsmap"], n + 1)
    known = np.nonzero(~np.isnan(ts))[0]
    if len(known):  # event i was due at t0 + (i - 1) / rate: fill the ones no socket 0 saw
        t0 = ts[known[0]] - (known[0] - 1) / rate
        ts = t0 + (np.arange(n + 1) - 1) / rate
    seqs = np.arange(1, n + 1)
    stats = {"due": _latency_stats(recv, ts, seqs), "summary": delivery_summary(res["socks"], n),
             "complete": complete, "events": n, "peak_rss_growth": sampler.peak - rss0}
    c = stats["due"]
    note(f"{name}: {n} events x {clients} sockets: delivered {c['delivered']}/{c['expected']} (all: {complete});"
         f" due->receipt p50 {c['p50']:.1f} p90 {c['p90']:.1f} p99 {c['p99']:.1f} max {c['max']:.1f} ms"
         f" (over delivered); baseline RSS peak +{stats['peak_rss_growth'] / 2**20:.0f} MB;"
         f" gaps {stats['summary']['gaps']} dups {stats['summary']['dups']}; client loops late by p50"
         f" {res['loop_lag_ms']['p50']:.1f} p99 {res['loop_lag_ms']['p99']:.1f} ms")
    return stats


def paced_comparison(args, db: str, d: str):
    """The server (after a warm-up) and then the baseline, both paced at ``args.rate``
    to ``args.clients`` sockets: ``(server figures, baseline figures)``."""
    server = JupyterServer(db, d)
    try:
        paced_engine(server, db, 2, 1, args.rate, 1.0, 5.0, "warm-up")
        eng = paced_engine(server, db, args.clients, args.procs, args.rate, args.seconds, args.grace,
                           f"server, {args.clients} subscribers")
        if args.profile:
            paced_engine(server, db, args.clients, args.procs, args.rate, min(args.seconds, 10.0),
                         args.grace, "profiled run (not a figure)", profile=True)
    finally:
        server.stop()
    base = (NO_BASELINE if args.no_baseline else
            paced_baseline(args.clients, args.procs, args.rate, args.seconds, args.grace,
                           f"baseline, {args.clients} subscribers"))
    return eng, base
