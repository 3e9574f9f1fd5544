"""Tornado handlers: thin. They authenticate, move frames, and ask the store through the
gateway (never on the event loop): REST reads give up after ``store_timeout`` with 503."""

from __future__ import annotations

import os
from typing import Callable, Optional, TypeVar

import orjson
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.utils import ensure_async, url_path_join
from tornado import web
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketHandler

from engine.errors import RunBusy, UnknownRun
from engine.store.base import Store, envelope_json

from .connection import Connection
from .gateway import StoreUnavailable
from .protocol import FrameError, parse_command_body, wire_schema
from .session import Session, submit_command

AUTH_RESOURCE = "cmbagent"
#: Seconds a client is told to wait (``Retry-After``) when the store is unavailable.
RETRY_AFTER_S = 5

T = TypeVar("T")


class StoreDown(web.HTTPError):
    """503: the store is not open, or did not answer in time."""

    def __init__(self, text: str):
        super().__init__(503, "%s", text, reason="Store Unavailable")
        self.text = text


class _Base(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def app(self):
        return self.extensionapp

    def write_json(self, obj, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(obj if isinstance(obj, bytes) else orjson.dumps(obj))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StoreDown):
            self.set_header("Retry-After", str(RETRY_AFTER_S))
            self.write_json({"message": exc.text, "reason": "store unavailable"}, 503)
            return
        super().write_error(status_code, **kwargs)

    async def read(self, fn: Callable[[Store], T]) -> T:
        """``fn(store)`` off the loop; 503 if the store does not answer in time."""
        try:
            return await self.app.gateway.call(fn, timeout=self.app.store_timeout)
        except StoreUnavailable as exc:
            raise StoreDown(str(exc)) from None

    async def visible_doc(self, run_id: str) -> dict:
        """The run's document, or 404 if it is unknown or not this user's."""
        try:
            doc = await self.read(lambda s: s.run_doc(run_id))
        except UnknownRun:
            doc = None
        if doc is None or not self.app.visible(doc, self.current_user):
            raise web.HTTPError(404, f"unknown run {run_id!r}")
        return doc


class RunsHandler(_Base):
    @web.authenticated
    @authorized
    async def get(self):
        runs = [r for r in await self.read(lambda s: s.runs()) if self.app.visible(r, self.current_user)]
        self.write_json({"runs": runs})


class RunHandler(_Base):
    @web.authenticated
    @authorized
    async def get(self, run_id: str):
        await self.visible_doc(run_id)
        try:
            snap = await self.read(lambda s: s.snapshot(run_id))
        except UnknownRun:  # deleted meanwhile
            raise web.HTTPError(404, f"unknown run {run_id!r}") from None
        self.write_json({"type": "snapshot", **snap})

    @web.authenticated
    @authorized
    async def delete(self, run_id: str):
        """Delete the run (events, results, commands); 409 while it executes."""
        await self.visible_doc(run_id)
        try:
            await self.read(lambda s: s.delete_run(run_id))
        except UnknownRun:  # deleted meanwhile
            raise web.HTTPError(404, f"unknown run {run_id!r}") from None
        except RunBusy as exc:
            self.write_json({"message": str(exc), "code": exc.code}, 409)
            return
        self.write_json({"deleted": run_id})


class EventsHandler(_Base):
    MAX_LIMIT = 10_000

    @web.authenticated
    @authorized
    async def get(self, run_id: str):
        await self.visible_doc(run_id)
        after = self._int_arg("after_seq", 0)
        limit = min(self._int_arg("limit", 1000), self.MAX_LIMIT)

        def page(s: Store):
            first, last = s.bounds(run_id)
            # a cursor at or past the end has nothing to read (and one past 2**63 - 1 would
            # overflow SQLite's INTEGER: a 500 instead of an empty page)
            rows = s.event_rows(run_id, after, limit) if first - 1 <= after < last else []
            return first, last, rows

        first, last, rows = await self.read(page)
        if after < first - 1:
            raise web.HTTPError(410, f"events up to seq {first - 1} were trimmed; "
                                     f"GET the run's snapshot and continue from its seq")
        rid = orjson.dumps(run_id)
        body = b"".join((b'{"run_id":', rid, b',"first_seq":', str(first).encode(), b',"last_seq":',
                         str(last).encode(), b',"events":[',
                         b",".join(envelope_json(rid, r) for r in rows), b"]}"))
        self.write_json(body)

    def _int_arg(self, name: str, default: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise web.HTTPError(400, f"{name} must be an integer >= 0, not {raw!r}")
        return value


class CommandsHandler(_Base):
    @web.authenticated
    @authorized
    async def post(self, run_id: str):
        try:
            body = orjson.loads(self.request.body or b"null")
        except orjson.JSONDecodeError as exc:
            raise web.HTTPError(400, f"body is not valid JSON: {exc}") from None
        try:
            cmd = parse_command_body(body, run_id)
        except FrameError as exc:
            raise web.HTTPError(400, exc.message) from None
        await self.visible_doc(run_id)
        try:
            ack = await self.read(lambda s: submit_command(s, cmd))
        except StoreDown as exc:
            raise StoreDown(f"{exc.text}; the command may still be recorded when it does: send "
                            f"it again with the same command_id (it is applied once)") from None
        status = 200 if ack["ok"] else {"unknown_run": 404, "unknown_node": 404}.get(ack.get("code"), 409)
        self.write_json({"type": "ack", **{k: v for k, v in ack.items() if v is not None}}, status)


class SchemaHandler(_Base):
    @web.authenticated
    @authorized
    def get(self):
        self.write_json(wire_schema())


class WebSocket(WebSocketMixin, WebSocketHandler, ExtensionHandlerMixin, JupyterHandler):
    """``{base_url}cmbagent/api/ws``: one per browser tab, any number of runs."""

    auth_resource = AUTH_RESOURCE
    conn: Optional[Connection] = None

    def set_default_headers(self) -> None:
        """Headers are meaningless on a 101 upgrade (as jupyter_server's kernel socket)."""

    def get_compression_options(self):
        return None

    @property
    def max_message_size(self) -> int:
        return self.extensionapp.max_frame_bytes

    @ws_authenticated
    async def get(self, *args, **kwargs):
        user = self.current_user
        if not await ensure_async(self.authorizer.is_authorized(self, user, "execute", self.auth_resource)):
            raise web.HTTPError(403)
        gateway = self.extensionapp.gateway
        if gateway.store is None:
            raise web.HTTPError(503, "the run store is not open: %s", gateway.open_error)
        await super().get(*args, **kwargs)

    async def open(self, *args, **kwargs) -> None:
        super().open(*args, **kwargs)  # starts the keep-alive pings
        self.set_nodelay(True)
        app = self.extensionapp
        hub = app.hub
        user = self.current_user
        session = Session(app.gateway, server_id=app.server_id,
                          heartbeat_interval=app.heartbeat_interval, buffer_cap=app.client_buffer_bytes,
                          run_filter=lambda doc: app.visible(doc, user),
                          root_dir=os.path.abspath(os.path.expanduser(app.serverapp.root_dir)))
        self.conn = hub.connect(session, self._write_frame, self.close)
        self.conn.open(app.gateway.down_since)
        # The hub's commit cursor comes before this session's first read of the log, so
        # nothing committed after that read escapes the hub (client frames wait for it).
        await hub.start()

    async def on_message(self, message) -> None:
        await self.conn.receive(message)

    def on_close(self) -> None:
        if self.conn is not None:
            self.extensionapp.hub.disconnect(self.conn)

    def _write_frame(self, frame: bytes) -> None:
        """``frame`` as a text frame. Through the protocol's frame writer, which returns
        the stream's write future: ``write_message`` wraps that future in a Task of its
        own per frame, ~15% of the server's CPU at 2,000 subscribers. (No compression:
        ``get_compression_options`` is None.)"""
        protocol = self.ws_connection
        if protocol is None or protocol.is_closing():
            return  # on_close cleans up
        try:
            fut = protocol._write_frame(True, 0x1, frame)
        except StreamClosedError:
            return
        size = len(frame)
        if fut.done():  # the socket took it all at once (the usual case): no callback
            self._written(size, fut)
        else:
            fut.add_done_callback(lambda f: self._written(size, f))

    def _written(self, nbytes: int, fut) -> None:
        if not fut.cancelled():
            # A write fails when the client is gone (on_close cleans up): take the error,
            # or asyncio logs "Task exception was never retrieved" for every dropped client.
            fut.exception()
        self.conn.written(nbytes)


def routes(base: str = "/") -> list[tuple]:
    api = url_path_join(base, "cmbagent", "api")
    run = url_path_join(api, "runs", r"(?P<run_id>[^/]+)")
    return [
        (url_path_join(api, "ws"), WebSocket),
        (url_path_join(api, "runs"), RunsHandler),
        (run, RunHandler),
        (url_path_join(run, "events"), EventsHandler),
        (url_path_join(run, "commands"), CommandsHandler),
        (url_path_join(api, "schema"), SchemaHandler),
    ]
