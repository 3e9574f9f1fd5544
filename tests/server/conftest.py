"""A real Jupyter server (pytest-jupyter) with the extension on a fresh SQLite store."""

import json

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

import engine


@pytest.fixture
def db_url(tmp_path):
    return "sqlite:///" + str(tmp_path / "runs.sqlite").lstrip("/")


@pytest.fixture
def store(db_url):
    return engine.open_store(db_url)


@pytest.fixture
def jp_server_config(db_url):
    return {
        "ServerApp": {"jpserver_extensions": {"cmbagent_jupyter": True}},
        "CmbAgentApp": {"db_url": db_url},
    }


class WS:
    """A test client socket: JSON in, JSON out, with timeouts."""

    def __init__(self, conn):
        self.conn = conn

    async def send(self, obj):
        await self.conn.write_message(obj if isinstance(obj, str) else json.dumps(obj))

    async def recv(self, timeout=10):
        import asyncio

        msg = await asyncio.wait_for(self.conn.read_message(), timeout)
        return None if msg is None else json.loads(msg)


@pytest.fixture
def ws_connect(jp_ws_fetch):
    async def connect(**kwargs):
        conn = await jp_ws_fetch("cmbagent", "api", "ws", **kwargs)
        return WS(conn)

    return connect
