"""The protocol core of one WebSocket connection, without I/O.

A ``Session`` takes client frames in (``receive``), hears from the hub that runs have
new events (``notify``, ``notify_runs``) and whether the store answers
(``store_status``), and produces server frames (``take``). It never touches a socket.
It reads the store through a gateway (``await gateway.call(fn)`` runs ``fn(store)``), so
the operations that read (``receive``, ``pump``) are coroutines: the server's gateway runs
the reads off the event loop, tests give one that answers at once. One operation at a
time, and ``notify`` / ``notify_runs`` only between operations: the caller
(``connection.Connection``) keeps that order, so news never lands inside an operation.

The rules it keeps:

- per subscribed run a cursor, the last seq sent; events go out as ``(cursor, target]``
  read from the log, in order, many per frame: nothing lost, nothing sent twice;
- a subscription is registered with the hub *before* the log is read, so an event
  committed meanwhile triggers a later delivery rather than falling in between;
- a cursor that cannot be honoured (trimmed, ahead of the log, malformed, or a client
  too slow to keep its buffer bounded) gets ``reset`` and a snapshot, never a gap;
- every frame counts against the client's buffer (``buffer_cap``: bytes queued or handed
  to the socket and not yet written out). A frame a reset + snapshot replaces (events,
  snapshots, resets, run lists) that would pass the cap is dropped, and so is every
  such frame until the socket has drained; then each subscription that fell behind
  restarts with ``reset`` + snapshot, the run list is sent whole and each snapshot asked
  for meanwhile is sent once. Nothing is built for a client past its cap: a flood of
  ``request_state`` costs nothing but the requests.
  Replies (pong, ack, error, ...) are never dropped; a client whose unread replies
  exceed a quarter of the cap (64 KiB at least) is closed (``close_request``), with the
  reason. Memory per client: the cap (or one larger frame), plus that quarter;
- every client frame gets an answer; bad frames get an ``error`` and change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterator, Optional, Protocol, TypeVar

import orjson

from engine.errors import UnknownRun
from engine.events import now_iso
from engine.store.base import Store, envelope_json

from .protocol import PROTOCOL_VERSION, Command, FrameError, parse_client_frame

log = logging.getLogger(__name__)

#: Events per ``events`` frame at most.
MAX_EVENTS_PER_FRAME = 5000
#: Bytes of events an ``events`` frame holds at most (one event always goes, whatever its size).
EVENTS_FRAME_BYTES = 64 * 1024
#: Bytes of events a session lets be unwritten before it waits for the socket. Events are
#: read from the store on demand, so holding more buys nothing: with many subscribers,
#: every socket's copy of what it has not written yet is the server's memory.
EVENTS_WINDOW = 128 * 1024
#: Seconds a socket may write nothing while its window is full before it counts as slow:
#: owed more than its cap, it then gets a reset + snapshot once it drains. (A server that
#: falls behind a burst is not a slow client: its sockets keep writing.)
SLOW_CONSUMER_S = 10.0
#: Events per block of the read-through cache that sessions behind the hub's window share.
BLOCK = 512
#: Events read from the log per ``pump`` call at most (keeps the event loop responsive).
PUMP_BUDGET = 20000
#: The WebSocket close code for a client that reads too slowly even for its replies.
CLOSE_TOO_SLOW = 1008
#: Unread replies a client may have at least, whatever its buffer cap (~800 pongs).
MIN_REPLY_ROOM = 64 * 1024

T = TypeVar("T")


class Gateway(Protocol):
    """How a session reaches the store (``gateway.StoreGateway`` in the server)."""

    def call(self, fn: Callable[[Store], T]) -> Awaitable[T]: ...


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


class _Closed(Exception):
    """The connection closed while an operation waited for the store."""


@dataclass
class _Sub:
    cursor: int  # last seq sent to the client
    target: int  # last seq known to be in the log
    reset: Optional[str] = None  # when set: send reset(reason) + snapshot before anything else


class RowCache:
    """The events the hub has read, encoded, per run: a window of the latest ones, and the
    ``events`` frames built from them.

    One per hub, kept across wake-ups: each new event is read from the store and encoded
    once per server process, whatever the number of sessions, and sessions at the same
    cursor share one frame (frames end at block boundaries, so sessions that met there
    stay in step). Sessions behind the window read through its blocks: each full block of
    ``BLOCK`` events is read once, however many sessions ask for it at the same time.
    """

    def __init__(self, max_rows: int = 2 * MAX_EVENTS_PER_FRAME, max_frames: int = 256,
                 max_blocks: int = 32) -> None:
        self.max_rows = max_rows
        self.max_frames = max_frames
        self.max_blocks = max_blocks
        self.rows: dict[str, tuple[int, list[bytes]]] = {}  # run_id -> (first seq, encoded)
        #: (run_id, n) -> the encoded events ``n * BLOCK + 1 .. (n + 1) * BLOCK``, full
        #: blocks only, least recently used first: what sessions behind the window read,
        #: read once (they move through a backlog at about the same pace).
        self.blocks: dict[tuple[str, int], list[bytes]] = {}
        #: (run_id, n) -> the sessions waiting for the read of that block under way
        self._reading: dict[tuple[str, int], list[asyncio.Future]] = {}
        #: (run_id, after, asked upto) -> (frame, the seq it really ends at); oldest first
        self.frames: dict[tuple[str, int, int], tuple[bytes, int]] = {}

    def last(self, run_id: str) -> Optional[int]:
        """The last seq held for the run (None: nothing)."""
        entry = self.rows.get(run_id)
        return None if entry is None else entry[0] + len(entry[1]) - 1

    def put(self, run_id: str, first_seq: int, encoded: list[bytes]) -> None:
        """Add events ``first_seq, first_seq + 1, ...``: appended when they continue the
        window, else they start a new one. The window keeps the latest ``max_rows``."""
        if not encoded:
            return
        entry = self.rows.get(run_id)
        if entry is not None and first_seq == entry[0] + len(entry[1]):
            first, rows = entry[0], entry[1] + encoded
        else:
            first, rows = first_seq, list(encoded)
        if len(rows) > self.max_rows:
            cut = len(rows) - self.max_rows
            first, rows = first + cut, rows[cut:]
        self.rows[run_id] = (first, rows)

    def get(self, run_id: str, after: int, upto: int) -> Optional[list[bytes]]:
        entry = self.rows.get(run_id)
        if entry is None:
            return None
        first, encoded = entry
        if after + 1 < first or upto > first + len(encoded) - 1:
            return None
        return encoded[after + 1 - first: upto + 1 - first]

    def frame(self, key: tuple[str, int, int]) -> Optional[tuple[bytes, int]]:
        return self.frames.get(key)

    def keep_frame(self, key: tuple[str, int, int], frame: tuple[bytes, int]) -> None:
        self.frames[key] = frame
        while len(self.frames) > self.max_frames:
            del self.frames[next(iter(self.frames))]

    def block(self, run_id: str, n: int) -> Optional[list[bytes]]:
        rows = self.blocks.pop((run_id, n), None)
        if rows is not None:
            self.blocks[(run_id, n)] = rows  # most recently used
        return rows

    def keep_block(self, run_id: str, n: int, rows: list[bytes]) -> None:
        self.blocks[(run_id, n)] = rows
        while len(self.blocks) > self.max_blocks:
            del self.blocks[next(iter(self.blocks))]

    async def read_block(self, gateway: Gateway, run_id: str, n: int) -> Optional[list[bytes]]:
        """Block ``n`` of the run, encoded: from the cache, else read from the store and
        kept. One read per block however many sessions ask at once: those that ask while
        it is under way wait for it (sessions catching up a backlog move through it at
        about the same pace, so they reach each block together). None when the block is
        not full (the log's end), does not start where it should (trimmed), or the read
        failed: the caller reads for itself."""
        key = (run_id, n)
        rows = self.block(run_id, n)
        if rows is not None:
            return rows
        waiters = self._reading.get(key)
        if waiters is not None:
            waiter = asyncio.get_running_loop().create_future()
            waiters.append(waiter)
            return await waiter
        self._reading[key] = waiters = []
        try:
            raw = await gateway.call(lambda s: s.event_rows(run_id, n * BLOCK, BLOCK))
            if len(raw) == BLOCK and raw[0][0] == n * BLOCK + 1:
                rid = orjson.dumps(run_id)
                rows = [envelope_json(rid, r) for r in raw]
                self.keep_block(run_id, n, rows)
        finally:  # (a failed read: the waiters read for themselves, and meet the failure)
            del self._reading[key]
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(rows)
        return rows

    def forget(self, run_id: str) -> None:
        """Nobody follows the run any more."""
        self.rows.pop(run_id, None)
        for key in [k for k in self.frames if k[0] == run_id]:
            del self.frames[key]
        for key in [k for k in self.blocks if k[0] == run_id]:
            del self.blocks[key]


def _in_block(block: list[bytes], after: int, upto: int) -> list[bytes]:
    """The events after seq ``after`` up to ``upto`` (frames end at block boundaries) of
    the block that holds them."""
    start = after % BLOCK
    return block[start: start + upto - after]


def _fit(rows: list[bytes], limit: int) -> list[bytes]:
    """The first rows that, comma-separated, take ``limit`` bytes at most (the first row
    always)."""
    total = 0
    for i, row in enumerate(rows):
        total += len(row) + 1
        if total > limit and i:
            return rows[:i]
    return rows


def submit_command(store: Store, cmd: Command) -> dict:
    """Record ``cmd`` in the store; its ack (the same for the same ``command_id``)."""
    return store.submit_command(cmd.run_id, cmd.action, cmd.node_id, cmd.payload, cmd.command_id)


class Session:
    def __init__(self, gateway: Gateway, *, server_id: str, heartbeat_interval: float,
                 watcher: Optional[Watcher] = None, buffer_cap: int = 16 * 2**20,
                 run_filter=None, root_dir: Optional[str] = None,
                 slow_after_s: float = SLOW_CONSUMER_S, clock: Callable[[], float] = time.monotonic):
        self.gateway = gateway
        self.root_dir = root_dir
        self.server_id = server_id
        self.heartbeat_interval = heartbeat_interval
        self.watcher = watcher or _NoWatcher()
        self.buffer_cap = buffer_cap
        #: Optional predicate on a run document: which runs this client may see.
        self.run_filter = run_filter
        self.subs: dict[str, _Sub] = {}
        self.watching_runs = False
        self.in_flight = 0  # bytes handed to the socket, not yet written out
        #: Events unwritten at most before the pump waits for ``written`` (not a cap: a
        #: client is only past its cap when what it is owed would not fit in it)
        self.events_window = min(EVENTS_WINDOW, max(1, buffer_cap // 4))
        self._waiting = False  # the pump stopped at the window; ``written`` wakes it
        self.slow_after_s = slow_after_s
        self._clock = clock
        self._stalled_since: Optional[float] = None  # window full, nothing written since
        self._event_bytes = 256.0  # bytes per event sent, a running mean
        self.overflowed = False
        #: (code, reason) once the client is too slow even for its replies: close it.
        self.close_request: Optional[tuple[int, str]] = None
        self.closed = False
        self.store_down = False  # the store stopped answering (store_status)
        self._watched: set[str] = set()  # runs the hub was told to watch for this session
        self._runs_stale = False  # the run list changed while overflowed
        self._owed: set[str] = set()  # snapshots asked for (not subscribed) while overflowed
        self._runs_sent: dict[str, bytes] = {}  # the last version of each run the client has
        self._out: deque[tuple[bytes, bool]] = deque()  # (frame, is a reply)
        self._queued = 0
        self._flight: deque[list] = deque()  # [bytes not yet written, is a reply] per frame taken
        self._replies_unread = 0  # bytes of replies queued or in flight
        self._busy = False

    # -- output ------------------------------------------------------------------------

    def _send(self, frame: dict | bytes, droppable: Optional[tuple[str, Optional[str]]] = None) -> bool:
        """Queue a frame; False if it was dropped (the client is past its buffer cap).

        ``droppable``: (kind, run_id) of a frame a reset + snapshot or a new run list
        replaces; such a frame is dropped (and owed) rather than exceed the cap."""
        return self._send_all([frame if isinstance(frame, bytes) else orjson.dumps(frame)], droppable)

    def _send_all(self, parts: list[bytes], droppable: Optional[tuple[str, Optional[str]]]) -> bool:
        """Queue frames that go together (a reset and its snapshot), or none of them."""
        if self.close_request is not None:
            return False
        size = sum(map(len, parts))
        unread = self.in_flight + self._queued
        if droppable is not None:
            # What an idle socket is given always goes: it could not go otherwise.
            if self.overflowed or (unread and unread + size > self.buffer_cap):
                if not self.overflowed:
                    self._overflow()
                self._owe(droppable)
                return False
        else:
            if self._replies_unread + size > max(MIN_REPLY_ROOM, self.buffer_cap // 4):
                self._too_slow(self._replies_unread + size)
                return False
            self._replies_unread += size
        for data in parts:
            self._out.append((data, droppable is None))
        self._queued += size
        return True

    def take(self) -> list[bytes]:
        """Frames to write now, in order. Their bytes count as in flight until ``written``."""
        frames = []
        for data, reply in self._out:
            frames.append(data)
            self._flight.append([len(data), reply])
        self._out.clear()
        self.in_flight += self._queued
        self._queued = 0
        return frames

    def written(self, nbytes: int) -> bool:
        """The socket finished writing ``nbytes`` of what ``take`` returned. True when that
        drained an overflowed client: ``pump`` now restarts its subscriptions."""
        self.in_flight -= nbytes
        if nbytes:
            self._stalled_since = None
        while nbytes > 0 and self._flight:  # sockets write frames in order
            head = self._flight[0]
            done = min(nbytes, head[0])
            head[0] -= done
            nbytes -= done
            if head[1]:
                self._replies_unread -= done
            if not head[0]:
                self._flight.popleft()
        if self.overflowed:
            return self.in_flight <= self.buffer_cap // 4
        if self._waiting and self.in_flight + self._queued < self.events_window:
            self._waiting = False
            return True
        return False

    def cursor(self, run_id: str) -> Optional[int]:
        """The last seq sent for a subscribed run (None if not subscribed)."""
        sub = self.subs.get(run_id)
        return None if sub is None else sub.cursor

    # -- input -----------------------------------------------------------------------------

    def hello(self) -> None:
        hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "server_id": self.server_id,
                 "heartbeat_interval": self.heartbeat_interval}
        if self.root_dir is not None:
            hello["root_dir"] = self.root_dir
        self._send(hello)

    def store_status(self, available: bool, since: str) -> None:
        """The store stopped answering (or answers again) since ``since``: tell the client."""
        self.store_down = not available
        self._send({"type": "store_status", "available": available, "since": since})

    def answer_now(self, raw: str | bytes) -> bool:
        """While the store does not answer, a ping is answered at once, ahead of frames
        waiting for the store: its pong says the server is alive. True if it was."""
        if not self.store_down:
            return False
        try:
            msg = parse_client_frame(raw)
        except FrameError:
            return False  # answered in its turn
        if msg.type != "ping":
            return False
        self._pong(msg)
        return True

    async def receive(self, raw: str | bytes) -> None:
        """Handle one client frame; its answer is queued."""
        with self._operation():
            try:
                msg = parse_client_frame(raw)
                await getattr(self, f"_on_{msg.type}")(msg)
            except FrameError as exc:
                self._send(exc.frame())
            except _Closed:
                pass
            except Exception:  # a bug must not cost the client its socket (tornado would abort it)
                log.exception("cmbagent session: handling a client frame failed")
                self._send({"type": "error", "code": "internal",
                            "message": "the server failed to handle this frame; see its log"})

    @contextmanager
    def _operation(self) -> Iterator[None]:
        if self._busy:
            raise RuntimeError("a Session runs one operation at a time")
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    async def _read(self, fn: Callable[[Store], T]) -> T:
        result = await self.gateway.call(fn)
        if self.closed:  # nothing of a closed session may change after this
            raise _Closed()
        return result

    async def _on_ping(self, msg) -> None:
        self._pong(msg)

    def _pong(self, msg) -> None:
        self._send({"type": "pong", "id": msg.id, "server_time": now_iso()})

    async def _on_subscribe(self, msg) -> None:
        run_id = msg.run_id
        self._watch(run_id)  # live first: nothing can fall between backlog and live
        try:
            await self._check_visible(run_id, msg)
            first, last = await self._read(lambda s: s.bounds(run_id))
        except BaseException:  # any failure (a closed socket too) leaves no watch behind
            if run_id not in self.subs:
                self._unwatch(run_id)
            raise
        prior = self.subs.get(run_id)
        if prior is not None:  # a resubscribe: what the hub announced still holds
            last = max(last, prior.target)
        after = msg.after_seq
        if after is None:
            self.subs[run_id] = _Sub(0, last)
            await self._send_snapshot(run_id)
            return
        reason = ("malformed" if after == "malformed" else "ahead" if after > last
                  else "trimmed" if after < first - 1 else None)
        self.subs[run_id] = sub = _Sub(after if reason is None else 0, last, reason)
        if reason is None and after == last:  # nothing to replay: say so (a reply: never dropped)
            self._send(self._events_frame(run_id, []))
        elif reason is not None:
            await self._restart(run_id, sub)

    async def _on_unsubscribe(self, msg) -> None:
        if self.subs.pop(msg.run_id, None) is not None:
            self._unwatch(msg.run_id)
        self._send({"type": "unsubscribed", "run_id": msg.run_id})

    async def _on_subscribe_runs(self, msg) -> None:
        self.watching_runs = True
        self.watcher.watch_runs(True)
        await self._send_runs()

    async def _send_runs(self) -> None:
        if self.overflowed:
            self._runs_stale = True
            return
        runs = [r for r in await self._read(lambda s: s.runs()) if self._visible(r)]
        self._runs_sent = {r["id"]: orjson.dumps(r) for r in runs}
        self._send(b'{"type":"runs","runs":' + orjson.dumps(runs) + b"}", ("runs", None))

    async def _on_unsubscribe_runs(self, msg) -> None:
        if self.watching_runs:
            self.watching_runs = False
            self.watcher.watch_runs(False)
        self._send({"type": "unsubscribed"})

    async def _on_request_state(self, msg) -> None:
        await self._check_visible(msg.run_id, msg)
        await self._send_snapshot(msg.run_id)

    async def _on_command(self, msg: Command) -> None:
        await self._check_visible(msg.run_id, msg)
        try:
            ack = await self._read(lambda s: submit_command(s, msg))
        except _Closed:
            raise
        except Exception:  # the store failed: refuse the command, keep the socket
            log.exception("cmbagent: recording command %s failed", msg.command_id)
            ack = {"command_id": msg.command_id, "ok": False, "code": "internal",
                   "error": "the server could not record this command; see its log"}
        self._send({"type": "ack", **{k: v for k, v in ack.items() if v is not None}})

    # -- the hub ---------------------------------------------------------------------------

    def _watch(self, run_id: str) -> None:
        if not self.closed:
            self._watched.add(run_id)
            self.watcher.watch(run_id)

    def _unwatch(self, run_id: str) -> None:
        if run_id in self._watched:
            self._watched.discard(run_id)
            self.watcher.unwatch(run_id)

    # -- visibility ---------------------------------------------------------------------------

    def _visible(self, run_doc: dict) -> bool:
        return self.run_filter is None or self.run_filter(run_doc)

    async def _check_visible(self, run_id: str, msg) -> None:
        """Unknown runs and runs this client may not see get the same error."""
        try:
            doc = await self._read(lambda s: s.run_doc(run_id))
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
                if not self._send(b'{"type":"run_changed","run":' + encoded + b"}", ("runs", None)):
                    return  # overflowed: the whole list follows the drain

    def notify_deleted(self, run_ids: list[str]) -> None:
        """Runs deleted from the store: a client that follows one, or was sent it in its
        run list, hears ``run_deleted`` (never one it may not see: it was never sent it)."""
        for run_id in run_ids:
            followed = self.subs.pop(run_id, None) is not None
            if followed:
                self._unwatch(run_id)
            listed = self._runs_sent.pop(run_id, None) is not None
            if followed or listed:
                self._send({"type": "run_deleted", "run_id": run_id})

    def behind(self) -> bool:
        """True while some subscription has events (or a reset) still to send."""
        return any(s.cursor < s.target or s.reset for s in self.subs.values())

    async def pump(self, cache: Optional[RowCache] = None, budget: int = PUMP_BUDGET) -> bool:
        """Queue the events each subscription is missing; True if more work remains."""
        with self._operation():
            try:
                return await self._pump(cache, budget)
            except _Closed:
                return False

    def pump_cached(self, cache: RowCache) -> bool:
        """``pump`` without waiting for anything: queue the events ``cache`` holds (the
        hub's window, its blocks, the frames built for other sessions). True when that was
        all ``pump`` had to do; False when it must run (a read, a restart, a full window,
        a drain). The hub calls it for every follower of a run right after reading the
        run's new events: one pass, no task switch per connection."""
        if self._busy or self.overflowed or self.closed:
            return False
        self._busy = True  # (an operation: inline, this runs once per connection per wake-up)
        try:
            for run_id, sub in self.subs.items():
                if sub.reset:
                    return False
                while sub.cursor < sub.target:
                    if self.in_flight + self._queued >= self.events_window:
                        return False
                    upto = min(sub.target, sub.cursor + MAX_EVENTS_PER_FRAME)
                    got = self._cached_frame(run_id, sub, upto, cache)
                    if got is None or not self._send_events(run_id, sub, *got):
                        return False
            return True
        finally:
            self._busy = False

    async def _pump(self, cache: Optional[RowCache], budget: int) -> bool:
        if self.overflowed:
            if self.in_flight > self.buffer_cap // 4:
                return False  # wait for the socket to drain
            self.overflowed = False
            if self._runs_stale:
                self._runs_stale = False
                await self._send_runs()
            owed, self._owed = self._owed - set(self.subs), set()
            for run_id in sorted(owed):  # (owed again if the client overflows again)
                await self._send_snapshot_or_error(run_id)
        # Restarts first: a subscription that had to wait for the drain goes before those
        # that got through last time (none of them starves the others).
        for run_id, sub in sorted(self.subs.items(), key=lambda item: item[1].reset is None):
            if budget <= 0 or self.overflowed:
                break
            if self.subs.get(run_id) is not sub:
                continue  # gone while an earlier run was read (the socket closed)
            if sub.reset:
                await self._restart(run_id, sub)
                continue
            while sub.cursor < sub.target and budget > 0:
                if self.in_flight + self._queued >= self.events_window:
                    return self._wait_for_socket(sub)
                upto = min(sub.target, sub.cursor + min(budget, MAX_EVENTS_PER_FRAME))
                got = self._cached_frame(run_id, sub, upto, cache) if cache is not None else None
                if got is None:
                    got = await self._frame_for(run_id, sub, upto, cache)
                    if got is None:
                        break  # reset queued instead
                cursor = sub.cursor
                if not self._send_events(run_id, sub, *got):
                    return False  # overflowed: it restarts (reset + snapshot) once drained
                budget -= sub.cursor - cursor
        return not self.overflowed and self.behind()

    def _send_events(self, run_id: str, sub: _Sub, frame: bytes, upto: int) -> bool:
        """Queue an events frame that ends at seq ``upto``; False if it was dropped."""
        if not self._send(frame, ("events", run_id)):
            return False
        n = upto - sub.cursor
        self._event_bytes += (len(frame) / n - self._event_bytes) * min(1.0, n / 1000)
        sub.cursor = upto
        return True

    def _wait_for_socket(self, sub: _Sub) -> bool:
        """The window is full: wait for ``written``. A socket that has written nothing for
        ``slow_after_s`` while owed more than its cap is past its cap: it restarts (reset +
        snapshot) once drained, rather than replay all it missed."""
        now = self._clock()
        if self._stalled_since is None:
            self._stalled_since = now
        owed = (sub.target - sub.cursor) * self._event_bytes
        if (now - self._stalled_since >= self.slow_after_s
                and self.in_flight + self._queued + owed > self.buffer_cap):
            self._overflow()
            return False
        self._waiting = True
        return False

    @staticmethod
    def _frame_end(sub: _Sub, upto: int) -> int:
        """Frames end at block boundaries at the latest, so subscribers at the same cursor
        get the same frames, built once, from then on."""
        return min(upto, (sub.cursor // BLOCK + 1) * BLOCK)

    def _cached_frame(self, run_id: str, sub: _Sub, upto: int,
                      cache: RowCache) -> Optional[tuple[bytes, int]]:
        """The events frame from the cursor on, up to ``upto`` and ``EVENTS_FRAME_BYTES``,
        and the seq it really ends at, when ``cache`` holds its events (else None)."""
        upto = self._frame_end(sub, upto)
        key = (run_id, sub.cursor, upto)
        shared = cache.frame(key)
        if shared is not None:
            return shared
        rows = cache.get(run_id, sub.cursor, upto)
        if rows is None:
            block = cache.block(run_id, sub.cursor // BLOCK)
            if block is None:
                return None
            rows = _in_block(block, sub.cursor, upto)
        return self._frame_of(key, rows, cache)

    async def _frame_for(self, run_id: str, sub: _Sub, upto: int,
                         cache: Optional[RowCache]) -> Optional[tuple[bytes, int]]:
        """As ``_cached_frame``, for events the cache does not hold: its block, read once for
        every session that needs it, else read for this session alone (at the log's end, or
        with no cache). None when the cursor turned out trimmed: a restart is queued."""
        upto = self._frame_end(sub, upto)
        after = sub.cursor
        rows = None
        if cache is not None:
            block = await cache.read_block(self.gateway, run_id, after // BLOCK)
            if self.closed:  # nothing of a closed session may change after this
                raise _Closed()
            if block is not None:
                rows = _in_block(block, after, upto)
        if rows is None:
            # read for itself: what one frame holds, about
            n = max(1, min(upto - after, int(EVENTS_FRAME_BYTES / self._event_bytes) + 1))
            raw = await self._read(lambda s: s.event_rows(run_id, after, n))
            if not raw or raw[0][0] != after + 1:  # trimmed under our feet
                sub.reset = "trimmed"
                await self._restart(run_id, sub)
                return None
            rid = orjson.dumps(run_id)
            rows = [envelope_json(rid, r) for r in raw]
        return self._frame_of((run_id, after, upto), rows, cache)

    def _frame_of(self, key: tuple[str, int, int], rows: list[bytes],
                  cache: Optional[RowCache]) -> tuple[bytes, int]:
        """The frame of ``rows`` (as many as ``EVENTS_FRAME_BYTES`` holds) after ``key``'s
        cursor, kept in ``cache`` under ``key`` for the sessions at the same cursor."""
        run_id, after, _ = key
        rows = _fit(rows, EVENTS_FRAME_BYTES)
        got = self._events_frame(run_id, rows), after + len(rows)
        if cache is not None:
            cache.keep_frame(key, got)
        return got

    @staticmethod
    def _events_frame(run_id: str, rows: list[bytes]) -> bytes:
        return b"".join((b'{"type":"events","run_id":', orjson.dumps(run_id), b',"events":[',
                         b",".join(rows), b"]}"))

    def _overflow(self) -> None:
        """The client cannot keep up: from now until the socket has drained, what a reset +
        snapshot (or the run list) replaces is not sent (nor built). What was queued within
        the cap still goes; each subscription then restarts."""
        self.overflowed = True
        for sub in self.subs.values():
            if sub.cursor < sub.target:  # fallen behind: a snapshot beats a long replay
                sub.reset = "slow_consumer"

    def _owe(self, dropped: tuple[str, Optional[str]]) -> None:
        """Remember what a dropped frame replaces, to send once the socket has drained."""
        kind, run_id = dropped
        if kind == "runs":
            self._runs_stale = self.watching_runs
        elif kind == "snapshot":
            sub = self.subs.get(run_id)
            if sub is None:
                self._owed.add(run_id)
            elif sub.reset is None:
                sub.reset = "slow_consumer"
        # (dropped events: their subscription is behind, and _overflow marked it)

    def _too_slow(self, unread: int) -> None:
        """Even the replies exceed the client's buffer: the connection is to be closed."""
        limit = max(MIN_REPLY_ROOM, self.buffer_cap // 4)
        log.warning("cmbagent session: closing a client that left %d bytes of replies unread "
                    "(limit %d)", unread, limit)
        self.close_request = (CLOSE_TOO_SLOW, f"client too slow: {unread} bytes of replies "
                                              f"unread (limit {limit} bytes)")
        self._out.clear()
        self._queued = 0

    async def _restart(self, run_id: str, sub: _Sub) -> None:
        """``reset`` (sub.reset is its reason) and a snapshot: both or neither."""
        await self._send_snapshot_or_error(run_id, sub.reset)

    async def _send_snapshot_or_error(self, run_id: str, reset: Optional[str] = None) -> None:
        """A snapshot owed without a request to answer: a run deleted meanwhile ends its
        subscription with an error."""
        try:
            await self._send_snapshot(run_id, reset)
        except FrameError as exc:
            if self.subs.pop(run_id, None) is not None:
                self._unwatch(run_id)
            self._send(exc.frame())

    async def _send_snapshot(self, run_id: str, reset: Optional[str] = None) -> None:
        """The run's snapshot (after a ``reset`` with that reason, if given). Past the
        buffer cap it is not even built: it is owed (a subscription restarts anyway)."""
        if self.overflowed:
            self._owe(("snapshot", run_id))
            return
        try:
            snap = await self._read(lambda s: s.snapshot(run_id))
        except UnknownRun:
            raise FrameError("unknown_run", f"unknown run {run_id!r}", run_id) from None
        parts = [b'{"type":"snapshot",' + orjson.dumps(snap)[1:]]
        if reset is not None:
            parts.insert(0, orjson.dumps({"type": "reset", "run_id": run_id, "reason": reset}))
        if not self._send_all(parts, ("snapshot", run_id)):
            return  # dropped: owed, or the subscription restarts once drained
        sub = self.subs.get(run_id)
        if sub is not None:
            sub.reset = None
            sub.cursor = snap["seq"]
            sub.target = max(sub.target, snap["seq"])

    def close(self) -> None:
        """The connection is gone: leave the hub; an operation still waiting ends quietly."""
        self.closed = True
        for run_id in list(self._watched):
            self._unwatch(run_id)
        if self.watching_runs:
            self.watching_runs = False
            self.watcher.watch_runs(False)
        self.subs.clear()
