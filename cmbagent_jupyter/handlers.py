"""Tornado handlers: thin. They authenticate, move frames, and call the store or the session."""

from __future__ import annotations

import os
from typing import Optional

import orjson
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.utils import ensure_async, url_path_join
from tornado import web
from tornado.ioloop import IOLoop
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from engine.errors import UnknownRun
from engine.store.base import envelope_json

from .protocol import FrameError, parse_command_body, wire_schema
from .session import RowCache, Session

AUTH_RESOURCE = "cmbagent"


class _Base(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def app(self):
        return self.extensionapp

    def write_json(self, obj, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(obj if isinstance(obj, bytes) else orjson.dumps(obj))

    def visible_doc(self, run_id: str) -> dict:
        """The run's document, or 404 if it is unknown or not this user's."""
        try:
            doc = self.app.store.run_doc(run_id)
        except UnknownRun:
            doc = None
        if doc is None or not self.app.visible(doc, self.current_user):
            raise web.HTTPError(404, f"unknown run {run_id!r}")
        return doc


class RunsHandler(_Base):
    @web.authenticated
    @authorized
    def get(self):
        runs = [r for r in self.app.store.runs() if self.app.visible(r, self.current_user)]
        self.write_json({"runs": runs})


class RunHandler(_Base):
    @web.authenticated
    @authorized
    def get(self, run_id: str):
        self.visible_doc(run_id)
        self.write_json({"type": "snapshot", **self.app.store.snapshot(run_id)})


class EventsHandler(_Base):
    MAX_LIMIT = 10_000

    @web.authenticated
    @authorized
    def get(self, run_id: str):
        self.visible_doc(run_id)
        after = self._int_arg("after_seq", 0)
        limit = min(self._int_arg("limit", 1000), self.MAX_LIMIT)
        first, last = self.app.store.bounds(run_id)
        if after < first - 1:
            raise web.HTTPError(410, f"events up to seq {first - 1} were trimmed; "
                                     f"GET the run's snapshot and continue from its seq")
        # a cursor at or past the end has nothing to read (and one past 2**63 - 1 would
        # overflow SQLite's INTEGER: a 500 instead of an empty page)
        rows = self.app.store.event_rows(run_id, after, limit) if after < last else []
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
        self.visible_doc(run_id)
        ack = await self.app.submit(cmd)
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
    session: Session

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
        await super().get(*args, **kwargs)

    def open(self, *args, **kwargs) -> None:
        super().open(*args, **kwargs)  # starts the keep-alive pings
        self.set_nodelay(True)
        app = self.extensionapp
        hub = app.hub
        hub.start()
        user = self.current_user
        self.session = Session(app.store, server_id=app.server_id,
                               heartbeat_interval=app.heartbeat_interval,
                               watcher=hub.watcher(self), buffer_cap=app.client_buffer_bytes,
                               run_filter=lambda doc: app.visible(doc, user),
                               root_dir=os.path.abspath(os.path.expanduser(app.serverapp.root_dir)))
        self._pump_scheduled = False
        self.session.hello()
        self._flush()

    async def on_message(self, message) -> None:
        session = self.session
        session.receive(message)
        while session.pending_commands:
            cmd = session.pending_commands.popleft()
            try:
                ack = await self.extensionapp.submit(cmd)
            except Exception:  # the store failed: refuse the command, keep the socket
                self.log.exception("cmbagent: recording command %s failed", cmd.command_id)
                ack = {"command_id": cmd.command_id, "ok": False, "code": "internal",
                       "error": "the server could not record this command; see its log"}
            session.command_done(ack)
        self.pump()

    def on_close(self) -> None:
        session = getattr(self, "session", None)
        if session is not None:
            session.close()

    def pump(self, cache: Optional[RowCache] = None) -> None:
        """Send what the session has for the client; keep going (yielding) while behind."""
        more = self.session.pump(cache)
        self._flush()
        if more and not self._pump_scheduled:
            self._pump_scheduled = True
            IOLoop.current().add_callback(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        if self.ws_connection is not None:
            self.pump()

    def _flush(self) -> None:
        for frame in self.session.take():
            try:
                fut = self.write_message(frame)
            except WebSocketClosedError:
                return
            size = len(frame)
            fut.add_done_callback(lambda f, n=size: self._written(n, f))

    def _written(self, nbytes: int, fut=None) -> None:
        if fut is not None and not fut.cancelled():
            # A write fails when the client is gone (on_close cleans up): take the error,
            # or asyncio logs "Task exception was never retrieved" for every dropped client.
            fut.exception()
        session = self.session
        session.written(nbytes)
        if session.overflowed and session.in_flight <= session.buffer_cap // 4 and self.ws_connection:
            self.pump()


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
