"""The protocol core of one WebSocket connection, without I/O.

A ``Session`` takes client frames in (``receive``), hears from the hub that runs
have new events (``notify``), and produces server frames (``take``). It reads the
store but never touches a socket, so tests drive it directly. The rules it keeps:

- per subscribed run a cursor, the last seq sent; events go out as ``(cursor, target]``
  read from the log, in order, many per frame: nothing lost, nothing sent twice;
- a subscription is registered with the hub *before* the log is read, so an event
  committed meanwhile triggers a later delivery rather than falling in between;
- a cursor that cannot be honoured (trimmed, ahead of the log, malformed, or a client
  too slow to keep its buffer bounded) gets ``reset`` and a snapshot, never a gap;
- every client frame gets an answer; bad frames get an ``error`` and change nothing.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Optional, Protocol

import orjson

from engine.errors import UnknownRun
from engine.events import now_iso
from engine.store.base import Store, envelope_json

from .protocol import PROTOCOL_VERSION, Command, FrameError, parse_client_frame

log = logging.getLogger(__name__)

#: Events per ``events`` frame at most.
MAX_EVENTS_PER_FRAME = 5000
#: Events read from the log per ``pump`` call at most (keeps the event loop responsive).
PUMP_BUDGET = 20000


class Watcher(Protocol):
    """What a session tells the hub: which runs (and whether the run list) it follows."""

    def watch(self, run_id: str) -> None: ...

    def unwatch(self, run_id: str) -> None: ...

    def watch_runs(self, on: bool) -> None: ...


class _NoWatcher:
    def watch(self, run_id: str) -> None:
        pass

    def unwatch(self, run_id: str) -> None:
        pass

    def watch_runs(self, on: bool) -> None:
        pass


@dataclass
class _Sub:
    cursor: int  # last seq sent to the client
    target: int  # last seq known to be in the log
    reset: Optional[str] = None  # when set: send reset(reason) + snapshot before anything else


class RowCache:
    """Encoded events of one hub wake-up, shared by every session it notifies."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[int, list[bytes]]] = {}  # run_id -> (first seq, encoded)
        self.frames: dict[tuple[str, int, int], bytes] = {}

    def put(self, run_id: str, first_seq: int, encoded: list[bytes]) -> None:
        self.rows[run_id] = (first_seq, encoded)

    def get(self, run_id: str, after: int, upto: int) -> Optional[list[bytes]]:
        entry = self.rows.get(run_id)
        if entry is None:
            return None
        first, encoded = entry
        if after + 1 < first or upto > first + len(encoded) - 1:
            return None
        return encoded[after + 1 - first: upto + 1 - first]


class Session:
    def __init__(self, store: Store, *, server_id: str, heartbeat_interval: float,
                 watcher: Optional[Watcher] = None, buffer_cap: int = 16 * 2**20,
                 run_filter=None, root_dir: Optional[str] = None):
        self.store = store
        self.root_dir = root_dir
        self.server_id = server_id
        self.heartbeat_interval = heartbeat_interval
        self.watcher = watcher or _NoWatcher()
        self.buffer_cap = buffer_cap
        #: Optional predicate on a run document: which runs this client may see.
        self.run_filter = run_filter
        self.subs: dict[str, _Sub] = {}
        self.watching_runs = False
        self.pending_commands: deque[Command] = deque()
        self.in_flight = 0  # bytes handed to the socket, not yet written out
        self.overflowed = False
        self._runs_stale = False  # the run list changed while overflowed
        self._runs_sent: dict[str, bytes] = {}  # the last version of each run the client has
        self._out: deque[tuple[bytes, bool]] = deque()  # (frame, is_events)
        self._queued = 0

    # -- output ------------------------------------------------------------------------

    def _send(self, frame: dict | bytes, events: bool = False) -> None:
        data = frame if isinstance(frame, bytes) else orjson.dumps(frame)
        self._out.append((data, events))
        self._queued += len(data)

    def take(self) -> list[bytes]:
        """Frames to write now, in order. Their bytes count as in flight until ``written``."""
        frames = [f for f, _ in self._out]
        self._out.clear()
        self.in_flight += self._queued
        self._queued = 0
        return frames

    def written(self, nbytes: int) -> None:
        """The socket finished writing ``nbytes`` of what ``take`` returned."""
        self.in_flight -= nbytes

    def has_output(self) -> bool:
        return bool(self._out)

    # -- input -----------------------------------------------------------------------------

    def hello(self) -> None:
        hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "server_id": self.server_id,
                 "heartbeat_interval": self.heartbeat_interval}
        if self.root_dir is not None:
            hello["root_dir"] = self.root_dir
        self._send(hello)

    def receive(self, raw: str | bytes) -> None:
        """Handle one client frame; its answer is queued (commands: see ``pending_commands``)."""
        try:
            msg = parse_client_frame(raw)
            getattr(self, f"_on_{msg.type}")(msg)
        except FrameError as exc:
            self._send(exc.frame())
        except Exception:  # a bug must not cost the client its socket (tornado would abort it)
            log.exception("cmbagent session: handling a client frame failed")
            self._send({"type": "error", "code": "internal",
                        "message": "the server failed to handle this frame; see its log"})

    def _on_ping(self, msg) -> None:
        self._send({"type": "pong", "id": msg.id, "server_time": now_iso()})

    def _on_subscribe(self, msg) -> None:
        run_id = msg.run_id
        self.watcher.watch(run_id)  # live first: nothing can fall between backlog and live
        try:
            self._check_visible(run_id, msg)
            first, last = self.store.bounds(run_id)
        except FrameError:
            if run_id not in self.subs:
                self.watcher.unwatch(run_id)
            raise
        after = msg.after_seq
        if after is None:
            self.subs[run_id] = _Sub(0, last)
            self._send_snapshot(run_id)
            return
        reason = ("malformed" if after == "malformed" else "ahead" if after > last
                  else "trimmed" if after < first - 1 else None)
        self.subs[run_id] = sub = _Sub(after if reason is None else 0, last, reason)
        if reason is None and after == last:  # nothing to replay: say so
            self._send(self._events_frame(run_id, []), events=True)
        elif reason is not None:
            self._restart(run_id, sub)

    def _on_unsubscribe(self, msg) -> None:
        if self.subs.pop(msg.run_id, None) is not None:
            self.watcher.unwatch(msg.run_id)
        self._send({"type": "unsubscribed", "run_id": msg.run_id})

    def _on_subscribe_runs(self, msg) -> None:
        self.watching_runs = True
        self.watcher.watch_runs(True)
        self._send_runs()

    def _send_runs(self) -> None:
        runs = [r for r in self.store.runs() if self._visible(r)]
        self._runs_sent = {r["id"]: orjson.dumps(r) for r in runs}
        self._send(b'{"type":"runs","runs":' + orjson.dumps(runs) + b"}")

    def _on_unsubscribe_runs(self, msg) -> None:
        if self.watching_runs:
            self.watching_runs = False
            self.watcher.watch_runs(False)
        self._send({"type": "unsubscribed"})

    def _on_request_state(self, msg) -> None:
        self._check_visible(msg.run_id, msg)
        self._send_snapshot(msg.run_id)

    def _on_command(self, msg: Command) -> None:
        self._check_visible(msg.run_id, msg)
        self.pending_commands.append(msg)

    def command_done(self, ack: dict) -> None:
        """The store's answer to a command from ``pending_commands``."""
        self._send({"type": "ack", **{k: v for k, v in ack.items() if v is not None}})

    # -- visibility ---------------------------------------------------------------------------

    def _visible(self, run_doc: dict) -> bool:
        return self.run_filter is None or self.run_filter(run_doc)

    def _check_visible(self, run_id: str, msg) -> None:
        """Unknown runs and runs this client may not see get the same error."""
        try:
            doc = self.store.run_doc(run_id)
        except UnknownRun:
            doc = None
        if doc is None or not self._visible(doc):
            ref = getattr(msg, "command_id", None) or run_id
            raise FrameError("unknown_run", f"unknown run {run_id!r}", ref)

    # -- delivery ----------------------------------------------------------------------------

    def notify(self, run_id: str, last_seq: int) -> None:
        """The hub saw events up to ``last_seq`` committed for ``run_id``."""
        sub = self.subs.get(run_id)
        if sub is not None and last_seq > sub.target:
            sub.target = last_seq

    def notify_runs(self, docs: list[dict]) -> None:
        if not self.watching_runs:
            return
        if self.overflowed:
            self._runs_stale = True  # sent whole once the client has drained
            return
        for doc in docs:
            if self._visible(doc):
                # Two wake-ups may read the same document (it is read after the change
                # that announced it): the client hears of each version once.
                encoded = orjson.dumps(doc)
                if self._runs_sent.get(doc["id"]) == encoded:
                    continue
                self._runs_sent[doc["id"]] = encoded
                self._send(b'{"type":"run_changed","run":' + encoded + b"}", events=True)

    def behind(self) -> bool:
        """True while some subscription has events (or a reset) still to send."""
        return any(s.cursor < s.target or s.reset for s in self.subs.values())

    def pump(self, cache: Optional[RowCache] = None, budget: int = PUMP_BUDGET) -> bool:
        """Queue the events each subscription is missing; True if more work remains."""
        if self.overflowed:
            if self.in_flight > self.buffer_cap // 4:
                return False  # wait for the socket to drain
            self.overflowed = False
            if self._runs_stale:
                self._runs_stale = False
                self._send_runs()
        for run_id, sub in list(self.subs.items()):
            if budget <= 0:
                break
            if sub.reset:
                self._restart(run_id, sub)
                continue
            while sub.cursor < sub.target and budget > 0:
                upto = min(sub.target, sub.cursor + min(budget, MAX_EVENTS_PER_FRAME))
                got = self._frame_for(run_id, sub, upto, cache)
                if got is None:
                    break  # reset queued instead
                frame, upto = got  # upto: the last seq the frame really holds
                budget -= upto - sub.cursor
                sub.cursor = upto
                self._send(frame, events=True)
                if self.in_flight + self._queued > self.buffer_cap:
                    self._overflow()
                    return False
        return self.behind()

    def _frame_for(self, run_id: str, sub: _Sub, upto: int,
                   cache: Optional[RowCache]) -> Optional[tuple[bytes, int]]:
        """The events frame for ``(cursor, upto]`` and the seq it really ends at."""
        key = (run_id, sub.cursor, upto)
        if cache is not None and key in cache.frames:
            return cache.frames[key], upto
        rows = cache.get(run_id, sub.cursor, upto) if cache is not None else None
        if rows is None:
            raw = self.store.event_rows(run_id, sub.cursor, upto - sub.cursor)
            if not raw or raw[0][0] != sub.cursor + 1:  # trimmed under our feet
                sub.reset = "trimmed"
                self._restart(run_id, sub)
                return None
            rid = orjson.dumps(run_id)
            rows = [envelope_json(rid, r) for r in raw]
            upto = raw[-1][0]
            key = (run_id, sub.cursor, upto)
        frame = self._events_frame(run_id, rows)
        if cache is not None:
            cache.frames[key] = frame
        return frame, upto

    @staticmethod
    def _events_frame(run_id: str, rows: list[bytes]) -> bytes:
        return b"".join((b'{"type":"events","run_id":', orjson.dumps(run_id), b',"events":[',
                         b",".join(rows), b"]}"))

    def _overflow(self) -> None:
        """The client cannot keep up: drop its queued events; it gets a reset once drained."""
        kept = deque((f, e) for f, e in self._out if not e)
        self._queued = sum(len(f) for f, _ in kept)
        self._out = kept
        self.overflowed = True
        self._runs_stale = self.watching_runs
        for sub in self.subs.values():
            sub.reset = "slow_consumer"

    def _restart(self, run_id: str, sub: _Sub) -> None:
        self._send({"type": "reset", "run_id": run_id, "reason": sub.reset})
        sub.reset = None
        self._send_snapshot(run_id)

    def _send_snapshot(self, run_id: str) -> None:
        try:
            snap = self.store.snapshot(run_id)
        except UnknownRun:
            raise FrameError("unknown_run", f"unknown run {run_id!r}", run_id) from None
        sub = self.subs.get(run_id)
        if sub is not None:
            sub.cursor = snap["seq"]
            sub.target = max(sub.target, snap["seq"])
        self._send(b'{"type":"snapshot",' + orjson.dumps(snap)[1:])

    def close(self) -> None:
        for run_id in self.subs:
            self.watcher.unwatch(run_id)
        if self.watching_runs:
            self.watcher.watch_runs(False)
        self.subs.clear()
