"""A real Jupyter server (pytest-jupyter) with the extension on a fresh SQLite store.

Every frame a test socket receives is checked against the JSON Schema the server itself
serves at ``GET cmbagent/api/schema`` (the ``ServerMessage`` definition).
"""

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

import engine
from server_support import FrameValidator, shutdown_executors


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cmbagent_app(**traits): extra CmbAgentApp config for this test's server")
    config.addinivalue_line(
        "markers", "identity_provider(cls): the ServerApp.identity_provider_class of this test's server")
    config.addinivalue_line("markers", "extension_list: uses the `extension list` subprocess")


def _extension_list() -> subprocess.Popen:
    # pytest-jupyter points the JUPYTER_* paths at temporary dirs inside tests; the
    # command must see the real installation
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_")}
    return subprocess.Popen([sys.executable, "-m", "jupyter", "server", "extension", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("extension_list") is not None)  # last


def pytest_collection_finish(session):
    """`jupyter server extension list` takes seconds (it imports every enabled
    extension): when its test is selected, start it now, so it runs alongside the rest."""
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("extension_list") for item in session.items):
        proc = session.config.stash[_EXTENSION_LIST] = _extension_list()

        def reap():  # if the test never ran (-x, interrupted)
            if proc.poll() is None:
                proc.kill()
            proc.communicate()

        session.config.add_cleanup(reap)


_EXTENSION_LIST = pytest.StashKey[subprocess.Popen]()


@pytest.fixture
def extension_list_output(request) -> str:
    proc = request.config.stash.get(_EXTENSION_LIST, None) or _extension_list()
    out, _ = proc.communicate(timeout=120)
    return out


@pytest.fixture
def store(db_url):
    s = engine.open_store(db_url)
    yield s
    shutdown_executors(s)


@pytest.fixture
def jp_server_config(db_url, request):
    traits = {"db_url": db_url}
    marker = request.node.get_closest_marker("cmbagent_app")
    if marker is not None:
        traits.update(marker.kwargs)
    server = {"jpserver_extensions": {"cmbagent_jupyter": True}}
    marker = request.node.get_closest_marker("identity_provider")
    if marker is not None:
        server["identity_provider_class"] = marker.args[0]
    return {"ServerApp": server, "CmbAgentApp": traits}


class FrameSchemaError(AssertionError):
    pass


class WS:
    """A test client socket: JSON in, JSON out, with timeouts. Every frame received is
    validated against the server's own schema (when a validator is given)."""

    def __init__(self, conn, validator=None):
        self.conn = conn
        self.validator = validator
        self.received: list[dict] = []

    async def send(self, obj):
        if isinstance(obj, bytes):
            await self.conn.write_message(obj, binary=True)
        else:
            await self.conn.write_message(obj if isinstance(obj, str) else json.dumps(obj))

    async def recv(self, timeout=10):
        msg = await asyncio.wait_for(self.conn.read_message(), timeout)
        if msg is None:
            return None
        obj = json.loads(msg)
        if self.validator is not None:
            errors = sorted(self.validator.iter_errors(obj), key=lambda e: e.path)
            if errors:
                raise FrameSchemaError(f"server frame violates the wire schema: {errors[0].message[:500]}"
                                       f"\nframe: {msg[:1000]}")
        # the server's catch-all for its own bugs: never expected in these tests
        assert not (obj.get("type") == "error" and obj.get("code") == "internal"), \
            f"the server failed handling a frame (see its log): {obj}"
        self.received.append(obj)
        return obj

    async def expect(self, *types, timeout=10):
        """The next frame, which must be of one of ``types``."""
        msg = await self.recv(timeout)
        assert msg is not None, f"socket closed (code {self.conn.close_code}) while expecting {types}"
        assert msg["type"] in types, f"expected {types}, got {msg}"
        return msg

    async def recv_until(self, predicate, timeout=10):
        """Frames up to and including the first one ``predicate`` accepts."""
        out = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.001, deadline - loop.time()))
            assert msg is not None, f"socket closed (code {self.conn.close_code}); got {out}"
            out.append(msg)
            if predicate(msg):
                return out

    async def request(self, obj, timeout=10):
        """Send ``obj`` then a ping; return every frame that came before the pong, which
        is everything ``obj`` caused (frames are answered in order)."""
        sentinel = f"sentinel-{uuid.uuid4().hex}"
        await self.send(obj)
        await self.send({"type": "ping", "id": sentinel})
        frames = await self.recv_until(lambda m: m["type"] == "pong" and m.get("id") == sentinel, timeout)
        return frames[:-1]

    def close(self):
        self.conn.close()


def schema_validator(schema: dict) -> FrameValidator:
    return FrameValidator(schema)


@pytest.fixture
def wire_validator(jp_fetch):
    """An async factory of the validator for the server's own ``ServerMessage`` schema."""
    cache = {}

    async def get():
        if "v" not in cache:
            r = await jp_fetch("cmbagent", "api", "schema")
            cache["v"] = schema_validator(json.loads(r.body))
        return cache["v"]

    return get


@pytest.fixture
def ws_connect(jp_ws_fetch, wire_validator):
    """Open ``{base_url}cmbagent/api/ws`` with the token (via jp_ws_fetch); a validating WS."""
    conns = []

    async def connect(**kwargs):
        validator = await wire_validator()
        conn = await jp_ws_fetch("cmbagent", "api", "ws", **kwargs)
        conns.append(conn)
        return WS(conn, validator)

    yield connect
    for c in conns:
        c.close()


@pytest.fixture
def ws_url(jp_http_port, jp_base_url):
    """The socket's URL on 127.0.0.1, the host jp_fetch uses (login cookies are per host)."""
    return f"ws://127.0.0.1:{jp_http_port}{jp_base_url}cmbagent/api/ws"


@pytest.fixture
def ws_open(ws_url, wire_validator):
    """Open the socket with exactly the headers given (no token added). Raises
    HTTPClientError when the handshake is refused."""
    conns = []

    async def open_(headers=None, url=None):
        validator = await wire_validator()
        req = HTTPRequest(url or ws_url, headers=headers or {}, connect_timeout=10, request_timeout=10)
        conn = await websocket_connect(req)
        conns.append(conn)
        return WS(conn, validator)

    yield open_
    for c in conns:
        c.close()


@pytest.fixture
def cmbagent_app(jp_serverapp):
    """The extension's app instance (config, store, hub) in this test's server."""
    return jp_serverapp.web_app.settings["cmbagent_jupyter"]


@pytest.fixture
def token(jp_serverapp):
    return jp_serverapp.identity_provider.token

