"""The Python client of wire protocol v1 (asyncio + tornado.websocket).

    async with Client("http://127.0.0.1:8888/", token) as client:
        client.subscribe(run_id)
        async for item in client.events(run_id, markers=True):
            if isinstance(item, Marker):        # a snapshot replaced the state, or a reset
                ...
            else:                               # an applied event envelope (a dict)
                ...
            view = client.state(run_id)         # engine.snapshot.RunState, as of the last applied seq

Two layers, so the protocol rules can be tested without sockets:

- ``RunFollower``: the cursor of one run, without I/O. It takes the server frames of
  that run (``snapshot``, ``events``, ``reset``) and says what to hand to the
  application and what to send back. It keeps DESIGN's client rules: apply an event
  only if its seq is last+1; drop seq <= last (a duplicate); on a gap send
  ``request_state`` and ignore events until the snapshot; after ``reset`` wait for the
  snapshot; a snapshot replaces the state and sets last = its seq. The state is an
  ``engine.snapshot.RunState`` (the engine's own reducer), so it is always exactly the
  state as of ``last``.
- ``Client``: the socket. It connects to ``{base_url}cmbagent/api/ws`` with an
  ``Authorization: token T`` header, reconnects forever with full-jitter exponential
  backoff (``Backoff``), pings every ``heartbeat_interval`` of the server's hello and
  drops a connection whose pong is late, and after every (re)connection resubscribes
  each run from its last applied seq, the run list, and every unacknowledged command
  (same ``command_id``: the server applies a command id once).

Delivery to the application (``Client.events``): every applied event exactly once, in
seq order, as the envelope dict; with ``markers=True`` also ``Marker`` tuples where the
state changed other than by an event: ``Marker("snapshot", ...)`` (the state was
replaced; events between the old and the new seq are not delivered one by one) and
``Marker("reset", ...)`` (the server could not honour the cursor; a snapshot follows).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from engine.snapshot import RunState

from .protocol import PROTOCOL_VERSION, validate_server_frame

log = logging.getLogger(__name__)

#: Workflow states after which a run changes no more (``failed`` only by a retry).
SETTLED_STATES = frozenset({"completed", "failed", "cancelled"})
#: ``Client.connection_state`` values.
CONNECTION_STATES = ("connecting", "live", "reconnecting", "offline")

__all__ = ["Client", "RunFollower", "Backoff", "Marker", "Stats", "Step", "EventStream",
           "ClientError", "RunNotFound", "ws_url", "http_base_url", "SETTLED_STATES"]


class ClientError(Exception):
    """The client cannot do what was asked (closed, or the server refused it)."""


class RunNotFound(ClientError):
    """The server does not know the run (or this user may not see it)."""

    def __init__(self, run_id: str, message: str = ""):
        super().__init__(message or f"unknown run {run_id!r}")
        self.run_id = run_id


# -- plain data -----------------------------------------------------------------------------


@dataclass
class Stats:
    """Counters of one client (all runs together)."""

    reconnects: int = 0  #: connections established (hello received) after the first
    frames: int = 0  #: server frames received
    events_applied: int = 0
    duplicates_dropped: int = 0  #: events with seq <= last applied
    gaps: int = 0  #: events with seq > last+1 (each gap answered by one request_state)
    resets: int = 0  #: ``reset`` frames

    def as_dict(self) -> dict:
        return asdict(self)


class Marker(NamedTuple):
    """A change of a run's state that is not one applied event."""

    kind: str  #: "snapshot" (the state was replaced) or "reset" (a snapshot follows)
    run_id: str
    seq: Optional[int]  #: the snapshot's seq; for a reset, the last seq applied before it
    reason: Optional[str] = None  #: a reset's reason (trimmed, ahead, malformed, slow_consumer)
    snapshot: Optional[dict] = None  #: the snapshot's content (run, nodes, edges, layout, seq)


class Step(NamedTuple):
    """What a ``RunFollower`` makes of one frame."""

    items: list  #: event dicts and Markers to deliver, in order
    send: list  #: frames (dicts) to send to the server


Item = Union[dict, Marker]


class Backoff:
    """Full-jitter exponential backoff: ``uniform(0, min(cap, first * 2**attempt))``.

    ``attempt`` counts the failures since the last ``reset``: the first retry waits at
    most ``first`` seconds, and no wait is longer than ``cap``.
    """

    def __init__(self, first: float = 1.0, cap: float = 30.0, rng: Optional[random.Random] = None):
        if first <= 0 or cap <= 0:
            raise ValueError("backoff first and cap must be > 0")
        self.first, self.cap = float(first), float(cap)
        self.rng = rng or random.Random()
        self.attempt = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.first * 2.0 ** min(self.attempt, 64))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


# -- the protocol core of one run, without I/O --------------------------------------------


def view_from_snapshot(snap: dict) -> RunState:
    """A ``RunState`` holding a snapshot's state (its documents are copied, not shared)."""
    nodes = {n["id"]: dict(n) for n in snap["nodes"]}
    return RunState(dict(snap["run"]), nodes, [dict(e) for e in snap["edges"]], snap["seq"])


class RunFollower:
    """The client side of one run subscription: cursor, dedup, gaps, resets and the state.

    ``last`` is the seq of the last event applied (None: nothing yet, a snapshot is
    expected). ``view`` is a ``RunState`` as of ``last`` once a snapshot arrived; a
    follower created with an explicit ``after_seq`` has no view until the server sends
    a snapshot (it still delivers the events, in order, exactly once).
    """

    def __init__(self, run_id: str, after_seq: Optional[int] = None, stats: Optional[Stats] = None):
        if after_seq is not None and (isinstance(after_seq, bool) or not isinstance(after_seq, int)
                                      or after_seq < 0):
            raise ValueError(f"after_seq must be an integer >= 0, not {after_seq!r}")
        self.run_id = run_id
        self.last: Optional[int] = after_seq
        self.view: Optional[RunState] = None
        #: Why events are ignored for now: "subscribe" (first snapshot), "gap", "reset" or None.
        self.awaiting: Optional[str] = "subscribe" if after_seq is None else None
        #: Highest seq ever delivered: an event is delivered at most once, even when a
        #: snapshot older than it makes the state go back and replay it.
        self.delivered = after_seq or 0
        self.stats = stats if stats is not None else Stats()
        self.error: Optional[str] = None

    @property
    def synced(self) -> bool:
        """True when the state is usable: a snapshot arrived and no gap or reset is open."""
        return self.view is not None and self.awaiting is None

    def subscribe_frame(self) -> dict:
        """The ``subscribe`` to send on every (re)connection: from the last applied seq.

        A new connection replays exactly the events after ``last``, so a gap or reset
        that was open on the old connection is closed by it.
        """
        frame = {"type": "subscribe", "run_id": self.run_id}
        if self.last is None:
            self.awaiting = "subscribe"
        else:
            frame["after_seq"] = self.last
            self.awaiting = None
        return frame

    def receive(self, frame: dict) -> Step:
        """Handle one server frame about this run (``snapshot``, ``events`` or ``reset``)."""
        ftype = frame.get("type")
        if ftype == "events":
            return self.on_events(frame["events"])
        if ftype == "snapshot":
            return self.on_snapshot(frame)
        if ftype == "reset":
            return self.on_reset(frame.get("reason", ""))
        return Step([], [])

    def on_events(self, events: list[dict]) -> Step:
        items: list = []
        send: list = []
        for ev in events:
            seq = ev["seq"]
            if self.awaiting is not None:
                continue  # a snapshot is on its way and will cover it
            if seq <= self.last:
                self.stats.duplicates_dropped += 1
                continue
            if seq != self.last + 1:
                self._gap(send)
                continue
            if self.view is not None:
                try:
                    self.view.apply(ev)
                except Exception:  # the state cannot take it: start over from a snapshot
                    log.warning("run %s: event %s could not be applied; requesting the state",
                                self.run_id, seq, exc_info=True)
                    self.view = None
                    self._gap(send)
                    continue
            self.last = seq
            self.stats.events_applied += 1
            if seq > self.delivered:
                self.delivered = seq
                items.append(ev)
        return Step(items, send)

    def _gap(self, send: list) -> None:
        self.stats.gaps += 1
        self.awaiting = "gap"
        send.append({"type": "request_state", "run_id": self.run_id})

    def on_snapshot(self, snap: dict) -> Step:
        content = {k: v for k, v in snap.items() if k != "type"}
        self.view = view_from_snapshot(content)
        self.last = content["seq"]
        self.awaiting = None
        self.delivered = max(self.delivered, self.last)
        return Step([Marker("snapshot", self.run_id, self.last, None, content)], [])

    def on_reset(self, reason: str) -> Step:
        self.stats.resets += 1
        self.awaiting = "reset"
        return Step([Marker("reset", self.run_id, self.last, reason)], [])


# -- delivery to the application ------------------------------------------------------------


_END = object()


class EventStream:
    """``async for item in client.events(run_id)``: applied events (and markers), in order.

    Registered when created, so nothing applied after ``client.events()`` returned is
    missed. Ends when the client closes or the run is unsubscribed; raises
    ``RunNotFound`` if the server does not know the run. ``await stream.next(timeout)``
    is the same with a timeout (``asyncio.TimeoutError``; no item is lost by it).
    """

    def __init__(self, client: "Client", run_id: str, markers: bool):
        self.client, self.run_id, self.markers = client, run_id, markers
        self._items: deque = deque()
        self._ready = asyncio.Event()
        self._done = False

    def _put(self, item: Any) -> None:
        if self._done:
            return
        if isinstance(item, Marker) and not self.markers:
            return
        self._items.append(item)
        self._ready.set()

    def _end(self, exc: Optional[BaseException] = None) -> None:
        if not self._done:
            self._items.append(exc if exc is not None else _END)
            self._ready.set()
            self._done = True

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> Item:
        return await self.next()

    async def next(self, timeout: Optional[float] = None) -> Item:
        while not self._items:
            self._ready.clear()
            if timeout is None:
                await self._ready.wait()
            else:
                await asyncio.wait_for(self._ready.wait(), timeout)
        item = self._items[0]
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        self._items.popleft()
        return item

    def pending(self) -> int:
        """Items received and not taken yet."""
        return sum(1 for i in self._items if i is not _END and not isinstance(i, BaseException))

    def close(self) -> None:
        """Stop receiving (the subscription itself stays)."""
        self.client._streams.get(self.run_id, set()).discard(self)
        self._end()

    async def aclose(self) -> None:
        self.close()


# -- URLs --------------------------------------------------------------------------------------


def _split(url: str):
    parts = urlsplit(url if "://" in url else "http://" + url)
    path = parts.path or "/"
    if not path.endswith("/"):
        path += "/"
    return parts, path


def http_base_url(url: str) -> str:
    """``http(s)://host:port{base_url}`` of a server URL (ws/wss are mapped, query dropped)."""
    parts, path = _split(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def ws_url(url: str) -> str:
    """The protocol's socket URL, ``ws(s)://host:port{base_url}cmbagent/api/ws``, for a server URL."""
    parts, path = _split(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, path + "cmbagent/api/ws", "", ""))


def _clock(iso: Optional[str]) -> str:
    """Local wall-clock time of an ISO timestamp (14:02:11), or the text as it is."""
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")
    except (TypeError, ValueError):
        return str(iso)


def _token_from_url(url: str) -> Optional[str]:
    parts = urlsplit(url)
    return dict(parse_qsl(parts.query)).get("token")


# -- the socket --------------------------------------------------------------------------------


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
        self.token = self._token if self._token is not None else _token_from_url(url)

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
        return f.view if f is not None else None

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
        return f.view  # type: ignore[return-value]

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
        stream = EventStream(self, run_id, markers)
        f = self.subscribe(run_id)
        if f.error:
            stream._end(RunNotFound(run_id, f.error))
            return stream
        if markers and f.view is not None:
            stream._put(Marker("snapshot", run_id, f.view.seq, None, f.view.snapshot()))
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

    def _on_error(self, msg: dict) -> None:
        ref = msg.get("ref")
        entry = self._commands.get(ref) if ref is not None else None
        if entry is not None:
            if not entry[1].done():
                entry[1].set_result({"command_id": ref, "ok": False, "error": msg.get("message"),
                                     "code": msg.get("code")})
            return
        f = self._followers.get(ref) if ref is not None else None
        if f is not None and msg.get("code") == "unknown_run":
            f.error = msg.get("message") or f"unknown run {ref!r}"
            for s in self._streams.pop(ref, set()):
                s._end(RunNotFound(ref, f.error))
            return
        log.warning("cmbagent client: server error %s: %s", msg.get("code"), msg.get("message"))
        self.protocol_errors.append(msg)
