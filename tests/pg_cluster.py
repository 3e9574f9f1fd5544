"""A real PostgreSQL for tests and benchmarks: an existing server, or a throwaway cluster.

``CMBAGENT_TEST_PG_URL`` (``postgresql://user@host:port/db``, a role that may create
databases) names an existing server. Without it, a throwaway cluster is made with the
machine's ``initdb`` / ``pg_ctl`` (Debian: /usr/lib/postgresql/<v>/bin) in a temporary
directory, on a free port, as the ``postgres`` user when running as root (PostgreSQL
refuses to run as root); it is stopped and deleted at exit.

``python tests/pg_cluster.py`` starts one and prints its URL (Ctrl-C stops it).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from typing import Optional

HOW_TO_ENABLE = ("PostgreSQL tests need a PostgreSQL server: install PostgreSQL (Debian: "
                 "apt-get install postgresql; its initdb is used to start a throwaway cluster) "
                 "or set CMBAGENT_TEST_PG_URL=postgresql://user@host:port/db (a role that may "
                 "CREATE DATABASE)")


class Unavailable(RuntimeError):
    pass


def _bindir() -> Optional[str]:
    for tool in ("pg_config",):
        if shutil.which(tool):
            out = subprocess.run([tool, "--bindir"], capture_output=True, text=True).stdout.strip()
            if out and os.path.exists(os.path.join(out, "initdb")):
                return out
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A PostgreSQL server the caller may create databases on."""

    def __init__(self, admin_url: str, proc_dir: Optional[str] = None, run_as: Optional[list[str]] = None,
                 bindir: Optional[str] = None):
        self.admin_url = admin_url
        self._dir = proc_dir
        self._run_as = run_as or []
        self._bindir = bindir

    @classmethod
    def get(cls, fsync: bool = False) -> "PgServer":
        """The server named by CMBAGENT_TEST_PG_URL, or a new throwaway cluster."""
        url = os.environ.get("CMBAGENT_TEST_PG_URL")
        if url:
            return cls(url)
        return cls.throwaway(fsync=fsync)

    @classmethod
    def throwaway(cls, fsync: bool = False) -> "PgServer":
        bindir = _bindir()
        if bindir is None:
            raise Unavailable("no PostgreSQL found (initdb not on PATH nor in /usr/lib/postgresql)")
        run_as: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root, and there is no 'postgres' user to run PostgreSQL as") from None
            run_as = ["runuser", "-u", "postgres", "--"]
        root = tempfile.mkdtemp(prefix="cmbagent-pg-")
        os.chmod(root, 0o755)
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        data = os.path.join(root, "data")
        port = _free_port()
        try:
            subprocess.run(run_as + [os.path.join(bindir, "initdb"), "-D", data, "-A", "trust",
                                     "-U", "postgres", "-E", "UTF8", "--no-sync"],
                           check=True, capture_output=True, text=True)
            opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=400"
                    f" -c shared_buffers=64MB")
            if not fsync:
                opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            subprocess.run(run_as + [os.path.join(bindir, "pg_ctl"), "-D", data, "-o", opts,
                                     "-l", os.path.join(root, "log"), "-w", "-t", "60", "start"],
                           check=True, capture_output=True, text=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            shutil.rmtree(root, ignore_errors=True)
            raise Unavailable(f"could not start a throwaway PostgreSQL with {bindir}: {detail.strip()}") from exc
        server = cls(f"postgresql://postgres@127.0.0.1:{port}/postgres", root, run_as, bindir)
        atexit.register(server.stop)
        return server

    def url(self, dbname: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{dbname}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, prefix: str = "cmbagent_test") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def pids(self) -> list[int]:
        """The cluster's processes: the postmaster and its children (a throwaway cluster only)."""
        if self._dir is None:
            raise Unavailable("not a throwaway cluster: its processes are not ours to signal")
        with open(os.path.join(self._dir, "data", "postmaster.pid")) as f:
            postmaster = int(f.readline())
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                except OSError:  # gone meanwhile
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:  # field 4: the parent
                    children.append(int(entry))
        return [postmaster, *children]

    @contextlib.contextmanager
    def frozen(self):
        """Stop every process of the cluster (SIGSTOP) for the ``with`` block: a database
        that hangs, its connections open. They are continued (SIGCONT) whatever happens."""
        pids = self.pids()
        try:
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            yield pids
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        if self._dir is None or not os.path.exists(self._dir):
            return
        subprocess.run(self._run_as + [os.path.join(self._bindir, "pg_ctl"), "-D",
                                       os.path.join(self._dir, "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(self._dir, ignore_errors=True)


if __name__ == "__main__":
    server = PgServer.throwaway(fsync="--fsync" in sys.argv)
    print(server.admin_url, flush=True)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
