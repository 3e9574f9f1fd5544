"""``Client``: the socket. A reconnecting client of one server, any number of runs.

It connects to ``{base_url}cmbagent/api/ws`` with an ``Authorization: token T`` header,
reconnects forever with full-jitter exponential backoff (``Backoff``), pings every
``heartbeat_interval`` of the server's hello and drops a connection whose pong is late,
and after every (re)connection resubscribes each run from its last applied seq, the run
list, and every unacknowledged command (same ``command_id``: the server applies a
command id once). The protocol rules of each run are its ``RunFollower``'s.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from datetime import datetime
from typing import Any, Callable, Optional, Sequence, Union
from urllib.parse import urlencode

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from engine.snapshot import RunState

from ..protocol import PROTOCOL_VERSION, validate_server_frame
from .backoff import Backoff
from .errors import ClientError, RunNotFound
from .follower import Marker, RunFollower, Stats
from .stream import EventStream
from .urls import http_base_url, token_from_url, ws_url

log = logging.getLogger(__name__)

#: ``Client.connection_state`` values.
CONNECTION_STATES = ("connecting", "live", "reconnecting", "offline")


def _clock(iso: Optional[str]) -> str:
    """Local wall-clock time of an ISO timestamp (14:02:11), or the text as it is."""
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")
    except (TypeError, ValueError):
        return str(iso)


class Client:
    """A reconnecting client of one server; any number of runs over one socket.

    Call the methods from the event loop the client runs on. The connection starts with
    ``start()`` (``async with Client(...)``, ``subscribe``, ``subscribe_runs`` and
    ``command`` call it when needed).
    """

    def __init__(self, url: Union[str, Sequence[str]], token: Optional[str] = None, *,
                 max_backoff: float = 30.0,
                 first_backoff: float = 1.0, ping_timeout: Optional[float] = None,
                 heartbeat_interval: Optional[float] = None, connect_timeout: float = 10.0,
                 max_message_size: int = 1 << 30, validate: bool = False,
                 rng: Optional[random.Random] = None):
        """
        url: the server's base URL (``http://host:port/base/``; ``?token=`` in it is used
            when ``token`` is not given). token: sent as ``Authorization: token T``.
            A list of URLs (servers sharing one store) is rotated through: every
            connection attempt after the first goes to the next URL (failover; any
            server resumes the runs' cursors). ``url`` is the one in use.
        ping_timeout: seconds a pong may take before the connection counts as dead
            (default: twice the heartbeat interval). heartbeat_interval: seconds between
            pings (default: the server's, from hello). validate: check every server frame
            against the protocol's pydantic models (slower; for tests and debugging).
        """
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("no server URL")
        self._token = token
        self._use_url(0)
        self.ping_timeout = ping_timeout
        self.heartbeat_override = heartbeat_interval
        self.connect_timeout = connect_timeout
        self.max_message_size = max_message_size
        self.validate = validate
        self.backoff = Backoff(first_backoff, max_backoff, rng)
        self.stats = Stats()
        self.server_id: Optional[str] = None
        self.heartbeat_interval: Optional[float] = None
        #: Why the last connection attempt failed or the last connection ended.
        self.last_error: Optional[str] = None
        #: The HTTP status of the last refused handshake (403: bad token), if any.
        self.last_http_status: Optional[int] = None
        self.protocol_errors: list[dict] = []  #: error frames that answered nothing we track
        #: False while the server says its run store does not answer (``store_status``):
        #: the socket stays open, what needs the store waits and then catches up exactly.
        self.store_available = True
        #: When the store stopped answering (ISO 8601), while it does not.
        self.store_unavailable_since: Optional[str] = None
        self.invalid_frames: list[dict] = []  #: with ``validate``: frames the models reject

        self._followers: dict[str, RunFollower] = {}
        self._streams: dict[str, set[EventStream]] = {}
        self._runs: Optional[dict[str, dict]] = None
        self._want_runs = False
        self._commands: dict[str, tuple[dict, asyncio.Future]] = {}
        self._conn = None
        self._state = "offline"
        self._retry_at: Optional[float] = None
        self._task: Optional[asyncio.Task] = None
        self._closed = False
        self._ever_live = False
        self._wake: Optional[asyncio.Event] = None
        self._waiters: list[asyncio.Future] = []
        self._ping_id = 0
        self._drop_reason: Optional[str] = None
        self._unanswered: deque[tuple[int, float]] = deque()
        self._listeners: list[Callable[["Client"], None]] = []

    def _use_url(self, index: int) -> None:
        self._url_index = index % len(self.urls)
        url = self.url = self.urls[self._url_index]
        self.base_url = http_base_url(url)
        self.ws_url = ws_url(url)
        self.token = self._token if self._token is not None else token_from_url(url)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "Client":
        """Start connecting (idempotent). Needs a running event loop."""
        if self._closed:
            raise ClientError("the client is closed")
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aenter__(self) -> "Client":
        return self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the socket, end every event stream and fail pending commands. Final."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for streams in self._streams.values():
            for s in streams:
                s._end()
        self._streams.clear()
        for _, fut in self._commands.values():
            if not fut.done():
                fut.set_exception(ClientError("the client was closed before the command was acknowledged"))
        self._set_state("offline")

    def retry_now(self) -> None:
        """Skip the rest of the backoff wait and try to connect at once."""
        if self._wake is not None:
            self._wake.set()

    def add_listener(self, fn: Callable[["Client"], None]) -> None:
        """Call ``fn(client)`` after every change (frame handled, connection state changed)."""
        self._listeners.append(fn)

    # -- observable state ------------------------------------------------------------------------

    @property
    def connection_state(self) -> str:
        """connecting | live | reconnecting (waiting ``next_retry_in`` s) | offline (not started or closed)."""
        return self._state

    @property
    def next_retry_in(self) -> Optional[float]:
        """Seconds until the next connection attempt while reconnecting, else None."""
        if self._state != "reconnecting" or self._retry_at is None:
            return None
        return max(0.0, self._retry_at - time.monotonic())

    def describe_connection(self) -> str:
        """``live``, ``reconnecting in 3 s``, ``connecting``, ``offline``: for people (with
        ``, run store not answering since ...`` while the server says so)."""
        if self._state == "reconnecting":
            left = self.next_retry_in or 0.0
            return f"reconnecting in {left:.0f} s" if left >= 1 else "reconnecting"
        if self._state == "live" and not self.store_available:
            return f"live, run store not answering since {_clock(self.store_unavailable_since)}"
        return self._state

    def follower(self, run_id: str) -> Optional[RunFollower]:
        return self._followers.get(run_id)

    def state(self, run_id: str) -> Optional[RunState]:
        """The run's state as of its last applied seq (None before the first snapshot)."""
        f = self._followers.get(run_id)
        return f.state if f is not None else None

    def last_seq(self, run_id: str) -> Optional[int]:
        f = self._followers.get(run_id)
        return f.last if f is not None else None

    def runs(self) -> dict[str, dict]:
        """Run documents by id, newest first, kept current by the run-list subscription."""
        return dict(self._runs or {})

    @property
    def runs_loaded(self) -> bool:
        return self._runs is not None

    async def wait_for(self, predicate: Callable[[], Any], timeout: Optional[float] = None) -> Any:
        """Wait until ``predicate()`` is truthy (checked after every change); return its value."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self._closed:
                raise ClientError("the client is closed")
            fut = loop.create_future()
            self._waiters.append(fut)
            try:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise asyncio.TimeoutError()
                await asyncio.wait_for(asyncio.shield(fut), left)
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    async def wait_live(self, timeout: Optional[float] = None) -> None:
        self.start()
        await self.wait_for(lambda: self._state == "live", timeout)

    async def wait_synced(self, run_id: str, timeout: Optional[float] = None) -> RunState:
        """Wait until the run has a state and no gap or reset is open; return the state.

        Subscribes to the run if needed; raises ``RunNotFound`` for an unknown run.
        """
        if run_id not in self._followers:
            self.subscribe(run_id)
        await self.wait_for(lambda: self._followers.get(run_id) is None
                            or self._followers[run_id].synced
                            or self._followers[run_id].error, timeout)
        f = self._followers.get(run_id)
        if f is None:
            raise ClientError(f"not subscribed to run {run_id!r}")
        if f.error:
            raise RunNotFound(run_id, f.error)
        return f.state  # type: ignore[return-value]

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        for fn in list(self._listeners):
            try:
                fn(self)
            except Exception:
                log.exception("client listener failed")

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self._changed()

    # -- subscriptions ---------------------------------------------------------------------------

    def subscribe(self, run_id: str, after_seq: Optional[int] = None) -> RunFollower:
        """Follow a run: without ``after_seq`` from a snapshot, else from the events after it.

        Idempotent (a second call returns the existing follower). The subscription is
        renewed on every reconnection from the last applied seq.
        """
        f = self._followers.get(run_id)
        if f is not None:
            return f
        f = self._followers[run_id] = RunFollower(run_id, after_seq, self.stats)
        self.start()
        if self._state == "live":
            self._send(f.subscribe_frame())
        return f

    def unsubscribe(self, run_id: str) -> None:
        if self._followers.pop(run_id, None) is None:
            return
        if self._state == "live":
            self._send({"type": "unsubscribe", "run_id": run_id})
        for s in self._streams.pop(run_id, set()):
            s._end()
        self._changed()

    def events(self, run_id: str, *, markers: bool = False) -> EventStream:
        """An async iterator of the run's applied events (dicts), each once, in seq order.

        With ``markers=True`` it also yields ``Marker``s: first, if the run already has a
        state, ``Marker("snapshot", ...)`` of it; then one per snapshot and reset. Subscribes
        to the run if needed.
        """
        stream = EventStream(run_id, markers,
                             lambda s: self._streams.get(run_id, set()).discard(s))
        f = self.subscribe(run_id)
        if f.error:
            stream._end(RunNotFound(run_id, f.error))
            return stream
        if markers and f.state is not None:
            stream._put(Marker("snapshot", run_id, f.state.seq, None, f.state.snapshot()))
        self._streams.setdefault(run_id, set()).add(stream)
        return stream

    def subscribe_runs(self) -> None:
        """Follow the run list: ``runs()`` is kept current from ``runs``/``run_changed``."""
        if self._want_runs:
            return
        self._want_runs = True
        self.start()
        if self._state == "live":
            self._send({"type": "subscribe_runs"})

    def unsubscribe_runs(self) -> None:
        if not self._want_runs:
            return
        self._want_runs = False
        self._runs = None
        if self._state == "live":
            self._send({"type": "unsubscribe_runs"})

    # -- commands -----------------------------------------------------------------------------------

    async def command(self, run_id: str, action: str, node_id: Optional[str] = None,
                      payload: Optional[dict] = None, command_id: Optional[str] = None,
                      timeout: float = 10) -> dict:
        """Send a command and return its ack (``{command_id, ok, state?, error?, code?}``).

        The same ``command_id`` is re-sent after every reconnection until an ack arrives
        (the server applies a command id once). A refusal is an ack with ``ok: False``
        (frames the server rejects as invalid, or unknown runs, included). Raises
        ``asyncio.TimeoutError`` if no ack came within ``timeout`` seconds.
        """
        command_id = command_id or uuid.uuid4().hex
        pending = self._commands.get(command_id)
        if pending is None:
            frame = {"type": "command", "command_id": command_id, "run_id": run_id, "action": action}
            if node_id is not None:
                frame["node_id"] = node_id
            if payload is not None:
                frame["payload"] = payload
            fut = asyncio.get_running_loop().create_future()
            self._commands[command_id] = (frame, fut)
            self.start()
            if self._state == "live":
                self._send(frame)
        else:
            fut = pending[1]
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            entry = self._commands.get(command_id)
            if entry is not None and entry[1] is fut:
                del self._commands[command_id]

    async def server_last_seq(self, run_id: str) -> int:
        """The last seq the server's log has for the run right now (REST, same auth)."""
        after = (self.last_seq(run_id) or 0)
        try:
            body = await self._get(f"cmbagent/api/runs/{run_id}/events",
                                   {"after_seq": after, "limit": 0})
            return int(body["last_seq"])
        except HTTPClientError as exc:
            if exc.code == 404:
                raise RunNotFound(run_id) from None
            if exc.code != 410:  # 410: the cursor was trimmed; the snapshot says too
                raise
        body = await self._get(f"cmbagent/api/runs/{run_id}")
        return int(body["seq"])

    async def wait_caught_up(self, run_id: str, timeout: Optional[float] = None) -> RunState:
        """Wait until the run's state includes every event the server had when called."""
        target = await self.server_last_seq(run_id)
        await self.wait_for(lambda: (self._followers.get(run_id) is None
                                     or (self._followers[run_id].synced
                                         and self._followers[run_id].last >= target)), timeout)
        return await self.wait_synced(run_id, 0)

    async def fetch_runs(self) -> list[dict]:
        """``GET cmbagent/api/runs`` (REST, no socket needed)."""
        return (await self._get("cmbagent/api/runs"))["runs"]

    async def _get(self, path: str, params: Optional[dict] = None) -> Any:
        url = self.base_url + path + (("?" + urlencode(params)) if params else "")
        req = HTTPRequest(url, headers=self._headers(), connect_timeout=self.connect_timeout,
                          request_timeout=max(self.connect_timeout, 30.0))
        resp = await AsyncHTTPClient().fetch(req)
        return orjson.loads(resp.body)

    # -- the connection loop --------------------------------------------------------------------

    def _headers(self) -> dict:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closed:
            self._set_state("connecting")
            conn = None
            try:
                req = HTTPRequest(self.ws_url, headers=self._headers(),
                                  connect_timeout=self.connect_timeout)
                conn = await websocket_connect(req, max_message_size=self.max_message_size)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            else:
                try:
                    await self._serve(conn)
                except asyncio.CancelledError:
                    conn.close()
                    raise
                except Exception as exc:
                    log.warning("cmbagent client: connection failed", exc_info=True)
                    self._failed(exc)
                finally:
                    conn.close()
                    self._conn = None
            if self._closed:
                break
            if len(self.urls) > 1:
                self._use_url(self._url_index + 1)
            delay = self.backoff.next_delay()
            self._retry_at = time.monotonic() + delay
            self._wake.clear()
            self._set_state("reconnecting")
            log.info("cmbagent client: %s; reconnecting in %.2f s", self.last_error, delay)
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self._retry_at = None

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, HTTPClientError):
            self.last_http_status = exc.code
            self.last_error = f"HTTP {exc.code} from {self.ws_url}"
        else:
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def _serve(self, conn) -> None:
        """One connection: hello, resubscribe, then frames until it closes."""
        raw = await asyncio.wait_for(conn.read_message(), self.connect_timeout)
        if raw is None:
            raise ConnectionError(f"closed before hello (code {conn.close_code})")
        hello = orjson.loads(raw)
        if hello.get("type") != "hello":
            raise ConnectionError(f"expected hello, got {str(hello.get('type'))[:50]!r}")
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise ConnectionError(f"server speaks protocol {hello.get('protocol')!r}, "
                                  f"this client {PROTOCOL_VERSION}")
        self.stats.frames += 1
        self.server_id = hello.get("server_id")
        self.heartbeat_interval = float(self.heartbeat_override or hello.get("heartbeat_interval") or 15.0)
        if self._ever_live:
            self.stats.reconnects += 1
        self._ever_live = True
        self.backoff.reset()
        self.last_http_status = None
        self._conn = conn
        self._drop_reason = None
        self._unanswered.clear()
        # A new server says so right after hello if its store does not answer.
        self.store_available, self.store_unavailable_since = True, None
        self._state = "live"
        for f in self._followers.values():
            self._send(f.subscribe_frame())
        if self._want_runs:
            self._send({"type": "subscribe_runs"})
        for frame, _ in list(self._commands.values()):
            self._send(frame)
        self._changed()
        heartbeat = asyncio.ensure_future(self._heartbeat(conn))
        try:
            while True:
                raw = await conn.read_message()
                if raw is None:
                    self.last_error = self._drop_reason or (
                        f"connection closed (code {conn.close_code}"
                        f"{', ' + conn.close_reason if conn.close_reason else ''})")
                    return
                self._handle(raw)
        finally:
            heartbeat.cancel()
            self._conn = None
            self._state = "connecting"  # the loop sets the real next state right away

    async def _heartbeat(self, conn) -> None:
        """Ping every interval; close the connection when a pong is later than the timeout."""
        interval = self.heartbeat_interval or 15.0
        timeout = self.ping_timeout if self.ping_timeout is not None else 2 * interval
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + interval
        while True:
            now = loop.time()
            if self._unanswered and now >= self._unanswered[0][1] + timeout:
                self._drop_reason = f"no pong within {timeout:g} s"
                log.info("cmbagent client: %s; dropping the connection", self._drop_reason)
                protocol = conn.protocol
                conn.close()
                # The server does not answer: tear the TCP stream down now instead of
                # waiting for its closing handshake (tornado would give it 5 s more).
                if protocol is not None and protocol.stream is not None:
                    protocol.stream.close()
                return
            if now >= next_ping:
                self._ping_id += 1
                self._unanswered.append((self._ping_id, now))
                self._send({"type": "ping", "id": self._ping_id})
                next_ping = now + interval
            wake = next_ping
            if self._unanswered:
                wake = min(wake, self._unanswered[0][1] + timeout)
            await asyncio.sleep(max(0.0, wake - loop.time()))

    def _send(self, frame: dict) -> None:
        conn = self._conn
        if conn is None:
            return  # sent again on the next connection (subscriptions, commands)
        try:
            conn.write_message(orjson.dumps(frame).decode())
        except WebSocketClosedError:
            pass

    # -- frames -----------------------------------------------------------------------------

    def _handle(self, raw: Union[str, bytes]) -> None:
        self.stats.frames += 1
        if self.validate:
            try:
                validate_server_frame(raw)
            except Exception as exc:  # recorded, then handled as well as it can be
                log.warning("cmbagent client: frame does not match the protocol: %s", exc)
                self.invalid_frames.append({"frame": raw[:2000], "error": str(exc)})
        msg = orjson.loads(raw)
        ftype = msg.get("type")
        if ftype in ("events", "snapshot", "reset"):
            f = self._followers.get(msg.get("run_id"))
            if f is not None:
                step = f.receive(msg)
                for frame in step.send:
                    self._send(frame)
                if step.items:
                    for s in list(self._streams.get(f.run_id, ())):
                        for item in step.items:
                            s._put(item)
        elif ftype == "runs":
            if self._want_runs:
                self._runs = {r["id"]: r for r in msg["runs"]}
        elif ftype == "run_changed":
            if self._want_runs and self._runs is not None:
                run = msg["run"]
                if run["id"] in self._runs:
                    self._runs[run["id"]] = run
                else:
                    self._runs = {run["id"]: run, **self._runs}
        elif ftype == "run_deleted":
            run_id = msg.get("run_id")
            if self._runs is not None:
                self._runs.pop(run_id, None)
            self._run_gone(run_id, f"run {run_id!r} was deleted")  # as for one that does not exist
        elif ftype == "ack":
            entry = self._commands.get(msg.get("command_id"))
            if entry is not None and not entry[1].done():
                entry[1].set_result({k: v for k, v in msg.items() if k != "type"})
        elif ftype == "pong":
            pid = msg.get("id")
            if isinstance(pid, int):
                while self._unanswered and self._unanswered[0][0] <= pid:
                    self._unanswered.popleft()
        elif ftype == "error":
            self._on_error(msg)
        elif ftype == "store_status":
            self.store_available = bool(msg.get("available"))
            self.store_unavailable_since = None if self.store_available else msg.get("since")
        self._changed()

    def _run_gone(self, run_id: str, error: str) -> None:
        """A followed run is not there (unknown, or deleted): its streams end with ``error``."""
        f = self._followers.get(run_id)
        if f is None:
            return
        f.error = error
        for s in self._streams.pop(run_id, set()):
            s._end(RunNotFound(run_id, error))

    def _on_error(self, msg: dict) -> None:
        ref = msg.get("ref")
        entry = self._commands.get(ref) if ref is not None else None
        if entry is not None:
            if not entry[1].done():
                entry[1].set_result({"command_id": ref, "ok": False, "error": msg.get("message"),
                                     "code": msg.get("code")})
            return
        if ref in self._followers and msg.get("code") == "unknown_run":
            self._run_gone(ref, msg.get("message") or f"unknown run {ref!r}")
            return
        log.warning("cmbagent client: server error %s: %s", msg.get("code"), msg.get("message"))
        self.protocol_errors.append(msg)
