"""The event hub: one tailer per store per server process, fanning out to connections.

The hub watches the store's commit cursor: a store that pushes notifications
(PostgreSQL's LISTEN/NOTIFY) wakes it (and it re-checks every ``recheck_interval``
anyway, in case a notification was lost), others are polled (a cheap indexed query)
every ``tail_interval``. When runs have new events it reads them once, encodes them
once, and tells every connection that follows those runs. Each connection then sends
what its own cursor is missing, in as few frames as possible: an idle one at once, in
the hub's pass, from the hub's cache (one frame per connection per pass, shared by
those at the same cursor). A pass over thousands of connections reads what was
committed meanwhile every ``DELIVER_SLICE`` connections, so the flush interval stretches
with the load instead of falling behind. The hub holds no run state: the log is the
truth, cursors live in the sessions (and in the clients).

Every store call goes through the gateway (off the event loop), and the hub relays the
gateway's "the store stopped answering / answers again" to every connection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Callable, Iterable, Optional, Protocol

import orjson

from engine.store.base import Store, envelope_json

from .connection import Connection
from .gateway import StoreGateway
from .session import MAX_EVENTS_PER_FRAME, RowCache, Session

log = logging.getLogger(__name__)

#: Seconds the tailer waits after a failed read before trying again.
FAILED_POLL_RETRY_S = 1.0
#: Connections told of new events between two reads of what was committed meanwhile
#: (2,000 subscribers, A/B at load 4-6: p99 161-496 ms at 100, 248-377 at 200, 323-380 at 50).
DELIVER_SLICE = 100


class Listener(Protocol):
    """What the hub needs of a connection (a ``connection.Connection``; tests give fakes)."""

    session: Session

    def notify(self, cache: Optional[RowCache], targets: dict[str, int], docs: Iterable[dict],
               deleted: Iterable[str] = ()) -> None: ...

    def store_status(self, available: bool, since: str) -> None: ...


class _ConnWatcher:
    """The hub, as seen by one session."""

    def __init__(self, hub: "EventHub", conn: Listener):
        self.hub, self.conn = hub, conn

    def watch(self, run_id: str) -> None:
        self.hub.by_run.setdefault(run_id, set()).add(self.conn)

    def unwatch(self, run_id: str) -> None:
        conns = self.hub.by_run.get(run_id)
        if conns is not None:
            conns.discard(self.conn)
            if not conns:
                del self.hub.by_run[run_id]
                self.hub.cache.forget(run_id)

    def watch_runs(self, on: bool) -> None:
        (self.hub.run_watchers.add if on else self.hub.run_watchers.discard)(self.conn)


class EventHub:
    def __init__(self, gateway: StoreGateway, tail_interval: float = 0.002,
                 reap_interval: Optional[float] = 5.0, recheck_interval: float = 5.0,
                 freeze_gc: bool = False):
        """``reap_interval``: seconds between checks for runs whose executor died (None:
        this hub does not reap)."""
        self.gateway = gateway
        self.freeze_gc = freeze_gc
        self.tail_interval = tail_interval
        self.reap_interval = reap_interval
        self.recheck_interval = recheck_interval
        self.by_run: dict[str, set[Listener]] = {}
        self.run_watchers: set[Listener] = set()
        self.connections: set[Listener] = set()
        self.cursor = 0
        #: The events read for the runs followed here, shared by every connection.
        self.cache = RowCache()
        self._started: Optional[asyncio.Future] = None
        self._tasks: list[asyncio.Task] = []
        self._woken: Optional[asyncio.Event] = None
        self._unsubscribe = None
        self._stopping = False
        gateway.add_listener(self._store_status)

    def watcher(self, conn: Listener) -> _ConnWatcher:
        """How ``conn``'s session tells this hub which runs it follows."""
        return _ConnWatcher(self, conn)

    def connect(self, session: Session, write: Callable[[bytes], None],
                close: Callable[[int, str], None]) -> Connection:
        """A connection driving ``session`` for a transport (``Connection``'s ``write`` and
        ``close``): the hub hears what it follows and tells it the store's availability
        from now on. The transport then calls ``conn.open(gateway.down_since)`` (it writes
        the hello: ``write`` may need the connection already) and, when it is gone,
        ``disconnect``."""
        conn = Connection(session, write, close)
        session.watcher = self.watcher(conn)
        self.connections.add(conn)
        return conn

    def disconnect(self, conn: Connection) -> None:
        """The transport is gone: the connection leaves the hub and stops."""
        self.connections.discard(conn)
        conn.close()

    def _store_status(self, available: bool, since: str) -> None:
        for conn in list(self.connections):
            conn.store_status(available, since)

    async def start(self) -> None:
        """Start tailing (idempotent: every caller waits until the hub has its cursor)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._begin())
        await asyncio.shield(self._started)

    async def _begin(self) -> None:
        if self.freeze_gc:
            # Everything the server holds by now lives as long as it does: move it out
            # of the collector's view. A full collection of the ~10^5 start-up objects
            # takes ~100 ms, and would stall every socket at once (the latency p99).
            gc.freeze()
        self._stopping = False
        store = self.gateway.store
        if store is not None and store.pushes_changes:
            # Listen before reading the cursor: a commit in between wakes the tailer.
            loop = asyncio.get_running_loop()
            self._woken = asyncio.Event()
            woken = self._woken

            def on_change(kind: Optional[str], run_id: Optional[str]) -> None:
                if kind != "cmbagent_commands":
                    loop.call_soon_threadsafe(woken.set)

            self._unsubscribe = store.subscribe(on_change)
        while True:
            try:
                self.cursor = await self.gateway.call(lambda s: s.change_cursor())
                break
            except Exception:
                log.exception("cmbagent hub: reading the store's commit cursor failed; retrying")
                await asyncio.sleep(FAILED_POLL_RETRY_S)
        self._tasks = [asyncio.ensure_future(self._tail())]
        if self.reap_interval is not None:
            self._tasks.append(asyncio.ensure_future(self._reap()))

    async def stop(self) -> None:
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._started is not None and not self._started.done():
            self._started.cancel()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, *([self._started] if self._started else []),
                             return_exceptions=True)
        self._tasks = []
        self._started = None

    async def _tail(self) -> None:
        # The flag, not only the cancellation, ends the loop: on Python < 3.12
        # asyncio.wait_for can swallow a cancellation that races its inner wait's end.
        while not self._stopping:
            try:
                if self._woken is None:  # polled: the gateway asks until something changed
                    await self._deliver(*await self.gateway.poll(
                        lambda s: _changed(s, self.cursor), self.tail_interval))
                    continue
                await self.poll()
            except Exception:  # a failed read must not stop the hub; retry shortly
                log.exception("cmbagent hub: polling the store failed")
                await asyncio.sleep(FAILED_POLL_RETRY_S)
                continue
            # Pushed: sleep until notified. The re-check bounds the delay of a
            # notification lost with the listening connection (and notices a store that
            # stopped answering even when nothing is being written).
            try:
                await asyncio.wait_for(self._woken.wait(), self.recheck_interval)
            except asyncio.TimeoutError:
                pass
            self._woken.clear()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.gateway.call(lambda s: s.reap())
            except Exception:
                log.exception("cmbagent hub: reaping lost runs failed")

    async def poll(self) -> None:
        """One tick: find runs with new commits, and tell who follows them."""
        await self._deliver(*await self.gateway.call(lambda s: s.changes_since(self.cursor)))

    async def _deliver(self, cursor: int, changes: dict[str, int]) -> None:
        while changes:
            cursor, changes = await self._pass(cursor, changes)

    async def _pass(self, cursor: int, changes: dict[str, int]) -> tuple[int, dict[str, int]]:
        """Tell the followers of ``changes`` (and run-list watchers) once; the changes
        committed meanwhile, for the next pass."""
        self.cursor = cursor
        # Deleted runs (last_seq 0, see Store.changes_since): who follows them, or the run
        # list, hears it; nothing is read for them.
        deleted = [run_id for run_id, last_seq in changes.items() if last_seq == 0]
        if deleted:
            changes = {r: s for r, s in changes.items() if s}
            for conn in self.run_watchers | {c for r in deleted for c in self.by_run.get(r, ())}:
                conn.notify(None, {}, (), deleted)
        docs = await self._read_new(changes, docs=bool(self.run_watchers))
        cache = self.cache
        targets: dict[Listener, dict[str, int]] = {}
        for run_id, last_seq in changes.items():
            for conn in self.by_run.get(run_id, ()):
                targets.setdefault(conn, {})[run_id] = last_seq
        watchers = self.run_watchers if docs else set()
        # Idle connections send what the cache holds right here (Connection.notify). A
        # pass over thousands of them takes a while: between slices the loop is let go,
        # and what was committed meanwhile is read and goes to the connections still
        # ahead in this pass (to those behind in the next), not a whole pass later.
        newer: dict[str, int] = {}
        for i, conn in enumerate(set(targets) | watchers):
            if i and not i % DELIVER_SLICE:
                at = self.cursor
                fresh = await self.gateway.call(lambda s: _changed(s, at))
                if fresh is not None:
                    self.cursor, more = fresh
                    if all(more.values()):  # (a deletion waits for the next pass)
                        await self._read_new(more, docs=False)
                    newer.update(more)
            told = targets.get(conn, {})
            if newer and told:
                told = {r: max(seq, newer.get(r, 0)) for r, seq in told.items()}
            conn.notify(cache, told, docs if conn in watchers else ())
        return self.cursor, newer

    async def _read_new(self, changes: dict[str, int], docs: bool) -> list[dict]:
        """Read the events of ``changes`` new to the cache into it, in one call off the
        loop, and (``docs``) the documents run lists show."""
        # What to read, decided here (the sessions' cursors live on this loop).
        cache = self.cache
        wanted: dict[str, tuple[int, int]] = {}
        for run_id, last_seq in changes.items():
            have = cache.last(run_id)
            if have is not None and last_seq - have <= cache.max_rows:
                after = have  # the window goes on
            else:
                cursors = [c for c in (conn.session.cursor(run_id)
                                       for conn in self.by_run.get(run_id, ())) if c is not None]
                if not cursors:
                    continue
                # A new window, from the slowest follower unless it is far behind (it
                # then reads for itself)
                after = max(min(cursors), last_seq - MAX_EVENTS_PER_FRAME)
            if last_seq > after:
                wanted[run_id] = (after, last_seq - after)
        doc_ids = list(changes) if docs else []
        rows, got_docs = await self.gateway.call(lambda s: _read(s, wanted, doc_ids))
        for run_id, got in rows.items():
            if got and self.by_run.get(run_id):
                rid = orjson.dumps(run_id)
                cache.put(run_id, got[0][0], [envelope_json(rid, r) for r in got])
        return got_docs


def _changed(store: Store, cursor: int) -> Optional[tuple[int, dict[str, int]]]:
    """In a pool thread: ``changes_since(cursor)``, or None if nothing changed."""
    cursor, changes = store.changes_since(cursor)
    return (cursor, changes) if changes else None


def _read(store: Store, wanted: dict[str, tuple[int, int]], doc_ids: list[str]):
    """In a pool thread: the rows of ``wanted`` (run_id -> (after, limit)) and the documents
    of ``doc_ids`` (runs deleted meanwhile left out)."""
    rows = {run_id: store.event_rows(run_id, after, limit) for run_id, (after, limit) in wanted.items()}
    docs = []
    for run_id in doc_ids:
        try:
            docs.append(store.run_doc(run_id))
        except KeyError:  # deleted meanwhile (UnknownRun)
            continue
    return rows, docs
