"""Real processes for the fault tests: `jupyter server` subprocesses, writer subprocesses,
cutting a client's socket, and condition waits with deadlines."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence

from support import free_port, wait_until_async  # noqa: F401  (free_port re-exported)
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

HERE = Path(__file__).resolve().parent
WRITER = HERE / "writer.py"
EXTENSIONS = {"cmbagent_jupyter": True,
              # the venv enables these too; they only slow the start (and restarts) down
              "jupyterlab": False, "jupyter_lsp": False, "notebook_shim": False,
              "jupyter_server_terminals": False, "notebook": False}


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


class ServerProc:
    """A real ``jupyter server`` subprocess with the extension, on a fixed port and store
    (``store_url``: ``sqlite:///...`` or ``postgresql://...``, its ``CmbAgentApp.db_url``)."""

    def __init__(self, workdir: Path, store_url: str, token: str, name: str = "server",
                 port: Optional[int] = None, args: Sequence[str] = ()):
        self.workdir, self.store_url, self.token, self.name = workdir, store_url, token, name
        self.args = list(args)  # more command-line options, e.g. --CmbAgentApp.<trait>=...
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0
        self.root = workdir / f"{name}-root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.jupyter_dir = workdir / f"{name}-jupyter"
        for sub in ("config", "data", "runtime"):
            (self.jupyter_dir / sub).mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    def start(self) -> "ServerProc":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        db_url = self.store_url
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_TOKEN")}
        env.update(CMBAGENT_DB_URL=db_url,
                   JUPYTER_CONFIG_DIR=str(self.jupyter_dir / "config"),
                   JUPYTER_DATA_DIR=str(self.jupyter_dir / "data"),
                   JUPYTER_RUNTIME_DIR=str(self.jupyter_dir / "runtime"))
        cmd = [sys.executable, "-X", "faulthandler", "-m", "jupyter_server", "--no-browser", "--allow-root",
               f"--port={self.port}", "--ServerApp.port_retries=0", "--ip=127.0.0.1",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               f"--ServerApp.jpserver_extensions={EXTENSIONS!r}",
               f"--CmbAgentApp.db_url={db_url}", *self.args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=str(self.root))
        return self

    async def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait until the extension answers REST with this token; return the seconds it took."""
        t0 = time.monotonic()
        client = AsyncHTTPClient()
        req = HTTPRequest(self.url + "cmbagent/api/runs",
                          headers={"Authorization": f"token {self.token}"},
                          connect_timeout=2, request_timeout=5)
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc and self.proc.returncode}):\n"
                                     f"{tail(self.log_path)}")
            try:
                resp = await client.fetch(req, raise_error=False)
                if resp.code == 200:
                    return time.monotonic() - t0
            except OSError:
                pass  # not listening yet
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{self.name} not ready after {timeout} s:\n{tail(self.log_path)}")
            await asyncio.sleep(0.05)

    async def rest(self, method: str, path: str, body: Optional[dict] = None,
                   timeout: float = 30.0) -> tuple[int, Optional[dict]]:
        """``method`` ``cmbagent/api/<path>`` on this server with the token: (status, JSON body)."""
        req = HTTPRequest(f"{self.url}cmbagent/api/{path}", method=method,
                          body=None if body is None else json.dumps(body), connect_timeout=5,
                          request_timeout=timeout,
                          headers={"Authorization": f"token {self.token}",
                                   "Content-Type": "application/json"})
        resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        return resp.code, (json.loads(resp.body) if resp.body else None)

    async def command(self, run_id: str, action: str, node_id: Optional[str] = None,
                      command_id: Optional[str] = None, timeout: float = 30.0) -> dict:
        """``POST cmbagent/api/runs/{run_id}/commands`` to this server; its ack (any status)."""
        body: dict = {"action": action, "command_id": command_id or uuid.uuid4().hex}
        if node_id is not None:
            body["node_id"] = node_id
        code, ack = await self.rest("POST", f"runs/{run_id}/commands", body, timeout)
        assert code in (200, 404, 409), f"{self.name}: POST {action} -> {code}: {ack!r}"
        return ack

    def kill(self) -> None:
        """SIGKILL: no shutdown, no close frames; the kernel resets its sockets."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def problems(self) -> list[str]:
        """Error/critical log lines and tracebacks of every start of this server, so far."""
        out = []
        for n in range(1, self.starts + 1):
            path = self.workdir / f"{self.name}-{n}.log"
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(("[E ", "[C ")) or "Traceback" in line or "never retrieved" in line:
                    out.append(f"{path.name}: {line}")
        return out

    def freeze(self) -> None:
        """SIGSTOP: the process stops answering, its sockets stay open (a silent dead peer)."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM (after SIGCONT, should it be frozen): jupyter's clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()

    def stop(self) -> None:
        """Terminate and wait; SIGKILL if the shutdown takes more than 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class WriterProc:
    """``writer.py`` in its own process: a run streaming into the store (a path or a URL)."""

    def __init__(self, workdir: Path, store_url: str, *args: str):
        self.workdir = workdir
        self.out = workdir / "writer.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-X", "faulthandler", str(WRITER), str(store_url),
                                          str(workdir), *args],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    async def run_id(self, timeout: float = 60.0) -> str:
        path = self.workdir / "run_id"

        def ready():
            if self.proc.poll() is not None and not path.exists():
                raise AssertionError(f"writer exited ({self.proc.returncode}):\n{tail(self.out)}")
            return path.exists() and path.read_text()

        return await wait_until_async(ready, timeout, "the writer's run id")

    def go(self) -> None:
        (self.workdir / "go").touch()

    def stop_emitting(self) -> None:
        (self.workdir / "stop").touch()

    async def finished(self, timeout: float = 120.0) -> dict:
        """Wait for the writer to exit; its final JSON line (state completed) is returned."""
        await wait_until_async(lambda: self.proc.poll() is not None, timeout, "the writer to finish",
                               interval=0.05)
        lines = self.out.read_text(errors="replace").strip().splitlines()
        assert self.proc.returncode == 0 and lines, \
            f"writer failed ({self.proc.returncode}):\n{tail(self.out)}"
        result = json.loads(lines[-1])
        assert result["state"] == "completed", result
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def cut(client, rst: bool = False) -> bool:
    """Cut the client's live socket abruptly: no close frame; with ``rst`` a TCP reset.

    Closes the TCP stream under tornado's websocket (``rst``: SO_LINGER 0 first, so the
    kernel sends RST instead of FIN). Unsent and unread frames are lost on the wire; the
    client sees its connection end and reconnects. False if no connection was live.
    """
    conn = client._conn
    protocol = getattr(conn, "protocol", None)
    stream = getattr(protocol, "stream", None)
    if stream is None or stream.closed():
        return False
    if rst:
        try:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    stream.close()
    return True


class App:
    """The client application of a fault test: follows one run and keeps every item the
    client hands it (``client.events(run_id, markers=True)``), as an application would.

    ``after_seq``: follow from that cursor (``subscribe(run_id, after_seq)``: exactly the
    events after it, no snapshot) instead of from a snapshot.
    """

    def __init__(self, client, run_id: str, after_seq: Optional[int] = None):
        self.client, self.run_id, self.after_seq = client, run_id, after_seq
        self.items: list = []
        self._consumer: Optional[asyncio.Future] = None

    async def start(self, timeout: float = 30.0) -> int:
        """Subscribe, wait for the first snapshot (with ``after_seq``: for the connection);
        return the base: the snapshot's seq, or ``after_seq``."""
        if self.after_seq is not None:
            self.client.subscribe(self.run_id, self.after_seq)
        stream = self.client.events(self.run_id, markers=True)
        self._consumer = asyncio.ensure_future(self._collect(stream))
        if self.after_seq is not None:
            await self.client.wait_live(timeout)
            return self.after_seq
        await self.client.wait_synced(self.run_id, timeout)
        return self.client.last_seq(self.run_id)

    async def _collect(self, stream) -> None:
        async for item in stream:
            self.items.append(item)

    async def catch_up(self, timeout: float = 60.0) -> Optional[dict]:
        """Wait until the client has every event of the log; its state's snapshot (None
        with ``after_seq``: such a follower has only the events, no state)."""
        if self.after_seq is not None:
            target = await self.client.server_last_seq(self.run_id)
            await self.client.wait_for(lambda: (self.client.last_seq(self.run_id) or 0) >= target,
                                       timeout)
            return None
        view = await self.client.wait_caught_up(self.run_id, timeout)
        return view.snapshot()

    def events(self) -> list[dict]:
        """The event envelopes received so far (markers left out)."""
        return [item for item in self.items if isinstance(item, dict)]

    async def close(self) -> None:
        await self.client.close()
        if self._consumer is not None:
            await asyncio.wait_for(self._consumer, 10)


class StatusProbe(threading.Thread):
    """``GET /api/status`` (a core Jupyter route) every ``interval`` s from its own thread
    (so the test's event loop does not colour the figures), recording each latency.

    A request that fails or takes longer than ``timeout`` is recorded with status None
    and the time it took."""

    def __init__(self, server: ServerProc, interval: float = 0.02, timeout: float = 5.0):
        super().__init__(name="status-probe", daemon=True)
        self.server, self.interval, self.timeout = server, interval, timeout
        self.samples: list[tuple[float, Optional[int]]] = []  # (seconds, HTTP status)
        self._halt = threading.Event()

    def run(self) -> None:
        conn = None
        while not self._halt.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=self.timeout)
            t0 = time.monotonic()
            try:
                conn.request("GET", "/api/status", headers={"Authorization": f"token {self.server.token}"})
                resp = conn.getresponse()
                resp.read()
                status: Optional[int] = resp.status
            except (OSError, http.client.HTTPException):
                status = None
                conn.close()
                conn = None
            self.samples.append((time.monotonic() - t0, status))
            self._halt.wait(self.interval)
        if conn is not None:
            conn.close()

    def stop(self) -> "StatusProbe":
        self._halt.set()
        self.join(self.timeout + 5)
        return self

    def figures(self) -> dict:
        """n, failures, p50 / p99 / max latency in ms."""
        lat = sorted(s for s, _ in self.samples)
        if not lat:
            return {"n": 0}

        def pct(p: float) -> float:
            return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1)

        return {"n": len(lat), "failures": sum(1 for _, st in self.samples if st != 200),
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(1000 * lat[-1], 1)}
