"""Fixtures for the fault tests: real `jupyter server` and writer subprocesses on a real
store (a SQLite file; a test module may override ``store_url``, e.g. with ``pg_url``), all
stopped at teardown (by their own handles), and a printed random seed."""

from __future__ import annotations

import os
import random
import secrets

import pytest

import engine
from fault_support import ServerProc, WriterProc


@pytest.fixture
def seed(request):
    """``FAULTS_SEED=n`` reproduces a run; otherwise a fresh seed, printed either way."""
    value = int(os.environ.get("FAULTS_SEED") or random.randrange(2**32))
    print(f"\n{request.node.name}: seed={value} (FAULTS_SEED={value} reproduces it)")
    return value


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "runs.sqlite"


@pytest.fixture
def store_url(db_path):
    """The store every process of the test opens: by default the SQLite file ``db_path``."""
    return "sqlite:///" + str(db_path).lstrip("/")


@pytest.fixture
def token():
    return secrets.token_hex(16)


@pytest.fixture
def spawn(tmp_path, store_url, token):
    """``spawn.server(name, port=None, args=())`` and ``spawn.writer(*args)``: started subprocesses."""
    servers: list[ServerProc] = []
    writers: list[WriterProc] = []

    class Spawn:
        @staticmethod
        def server(name: str = "server", port=None, args=(), url: str = None) -> ServerProc:
            """``url``: the store this server opens, if not the test's ``store_url``."""
            s = ServerProc(tmp_path, url or store_url, token, name, port, args).start()
            servers.append(s)
            return s

        @staticmethod
        def server_problems() -> list[str]:
            """What the servers logged as errors (tracebacks included) so far."""
            return [line for s in servers for line in s.problems()]

        @staticmethod
        def writer(*args: str) -> WriterProc:
            w = WriterProc(tmp_path, store_url, *args)
            writers.append(w)
            return w

    yield Spawn
    for w in writers:
        w.kill()
    for s in servers:  # all at once: a server takes a moment to shut down
        s.terminate()
    for s in servers:
        s.stop()


@pytest.fixture
def open_db(store_url):
    """``open_db()``: the store, opened in this process once the writer created it."""
    opened = []

    def _open():
        if not opened:
            opened.append(engine.open_store(store_url))
        return opened[0]

    yield _open
    for s in opened:
        s.close()
