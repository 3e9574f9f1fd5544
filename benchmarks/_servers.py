"""The servers the server benchmarks measure, as subprocesses.

- ``JupyterServer``: a real ``jupyter server`` with the cmbagent_jupyter extension, a
  token, and ``CMBAGENT_DB_URL`` pointing at the benchmark's SQLite file (or PostgreSQL
  database).
- ``BaselineServer``: ``_baseline_ws.py`` (a plain Tornado server, one frame per event).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from typing import Optional

from _common import note

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sqlite_url(path: str) -> str:
    return "sqlite:///" + os.path.abspath(path).lstrip("/")


def is_postgres(db: str) -> bool:
    """Whether a benchmark's ``db`` is a PostgreSQL URL (else it is a SQLite file's path)."""
    return db.startswith(("postgresql://", "postgres://"))


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, and SIGKILL if the process is still there ``grace`` s later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
        stop_process(self.proc, 20)
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
        stop_process(self.proc, 10)
