"""Fixtures for the client tests: a store, a real server (pytest-jupyter), a fake server."""

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

import engine
from client_support import FakeHandler, FakeServer, shutdown_executors


@pytest.fixture
def store(db_url):
    # Not closed here: a test's server may still be reading it (its store calls run in
    # threads until it stops); db_url closes it after the server has stopped.
    s = engine.open_store(db_url)
    yield s
    shutdown_executors(s)


@pytest.fixture
def jp_server_config(db_url):
    return {
        "ServerApp": {"jpserver_extensions": {"cmbagent_jupyter": True}},
        "CmbAgentApp": {"db_url": db_url, "heartbeat_interval": 0.2},
    }


@pytest.fixture
def server_url(jp_serverapp, http_server, jp_http_port, jp_base_url):
    """(url, token) of the pytest-jupyter server, base_url included ("/a%40b/").

    ``http_server`` is what serves the bound port: ``jp_serverapp`` alone accepts
    connections (the socket is bound) but never answers them.
    """
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}", jp_serverapp.identity_provider.token


@pytest.fixture
def fake_server(jp_asyncio_loop):
    fake = FakeServer()
    app = tornado.web.Application([(r"/base/cmbagent/api/ws", FakeHandler, {"fake": fake})])
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    fake.port, fake.server = port, server
    yield fake
    server.stop()
    for c in fake.conns:
        c.close()
