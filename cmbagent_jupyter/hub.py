"""The event hub: one tailer per store per server process, fanning out to connections.

The hub watches the store's commit cursor: a store that pushes notifications
(PostgreSQL's LISTEN/NOTIFY) wakes it, others are polled (a cheap indexed query) every
``tail_interval``. When runs have new events it reads them once, encodes them once,
and wakes every connection that follows those runs. Each connection then sends what
its own cursor is missing, in as few frames as possible. The hub holds no run state:
the log is the truth, cursors live in the sessions (and in the clients).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Optional, Protocol

import orjson

from engine.store.base import Store, envelope_json

from .session import MAX_EVENTS_PER_FRAME, RowCache, Session

log = logging.getLogger(__name__)


class Connection(Protocol):
    session: Session

    def pump(self, cache: Optional[RowCache] = None) -> None: ...


class _ConnWatcher:
    """The hub, as seen by one session."""

    def __init__(self, hub: "EventHub", conn: Connection):
        self.hub, self.conn = hub, conn

    def watch(self, run_id: str) -> None:
        self.hub.by_run.setdefault(run_id, set()).add(self.conn)

    def unwatch(self, run_id: str) -> None:
        conns = self.hub.by_run.get(run_id)
        if conns is not None:
            conns.discard(self.conn)
            if not conns:
                del self.hub.by_run[run_id]

    def watch_runs(self, on: bool) -> None:
        (self.hub.run_watchers.add if on else self.hub.run_watchers.discard)(self.conn)


class EventHub:
    def __init__(self, store: Store, tail_interval: float = 0.002, reap_interval: float = 5.0,
                 freeze_gc: bool = False):
        self.store = store
        self.freeze_gc = freeze_gc
        self.tail_interval = tail_interval
        self.reap_interval = reap_interval
        self.by_run: dict[str, set[Connection]] = {}
        self.run_watchers: set[Connection] = set()
        self.cursor = 0
        self._tasks: list[asyncio.Task] = []
        self._woken: Optional[asyncio.Event] = None
        self._unsubscribe = None
        self._stopping = False

    def watcher(self, conn: Connection) -> _ConnWatcher:
        return _ConnWatcher(self, conn)

    def start(self) -> None:
        """Start tailing (idempotent); needs a running event loop."""
        if self._tasks:
            return
        if self.freeze_gc:
            # Everything the server holds by now lives as long as it does: move it out
            # of the collector's view. A full collection of the ~10^5 start-up objects
            # takes ~100 ms, and would stall every socket at once (the latency p99).
            gc.freeze()
        self._stopping = False
        self.cursor = self.store.change_cursor()
        if self.store.pushes_changes:
            loop = asyncio.get_running_loop()
            self._woken = asyncio.Event()
            woken = self._woken

            def on_change(kind: Optional[str], run_id: Optional[str]) -> None:
                if kind != "cmbagent_commands":
                    loop.call_soon_threadsafe(woken.set)

            self._unsubscribe = self.store.subscribe(on_change)
        self._tasks = [asyncio.ensure_future(self._tail()), asyncio.ensure_future(self._reap())]

    async def stop(self) -> None:
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _tail(self) -> None:
        # The flag, not only the cancellation, ends the loop: on Python < 3.12
        # asyncio.wait_for can swallow a cancellation that races its inner wait's end.
        while not self._stopping:
            try:
                self.poll()
            except Exception:  # a failed read must not stop the hub; retry next tick
                log.exception("cmbagent hub: polling the store failed")
            if self._woken is None:
                await asyncio.sleep(self.tail_interval)
                continue
            # Pushed: sleep until notified. The re-check every reap_interval bounds the
            # delay of a notification lost with the listening connection.
            try:
                await asyncio.wait_for(self._woken.wait(), self.reap_interval)
            except asyncio.TimeoutError:
                pass
            self._woken.clear()

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await loop.run_in_executor(None, self.store.reap)
            except Exception:
                log.exception("cmbagent hub: reaping lost runs failed")

    def poll(self) -> None:
        """One tick: find runs with new commits, and wake who follows them."""
        cursor, changes = self.store.changes_since(self.cursor)
        if not changes:
            return
        self.cursor = cursor
        cache = RowCache()
        woken: set[Connection] = set()
        for run_id, last_seq in changes.items():
            conns = self.by_run.get(run_id)
            if not conns:
                continue
            subs = [c.session.subs[run_id] for c in conns if run_id in c.session.subs]
            if subs:
                after = min(s.cursor for s in subs)
                if last_seq - after <= MAX_EVENTS_PER_FRAME:  # far-behind readers read for themselves
                    rows = self.store.event_rows(run_id, after, last_seq - after)
                    if rows:
                        rid = orjson.dumps(run_id)
                        cache.put(run_id, rows[0][0], [envelope_json(rid, r) for r in rows])
            for conn in conns:
                conn.session.notify(run_id, last_seq)
                woken.add(conn)
        if self.run_watchers:
            docs = []
            for run_id in changes:
                try:
                    docs.append(self.store.run_doc(run_id))
                except KeyError:
                    continue
            for conn in self.run_watchers:
                conn.session.notify_runs(docs)
                woken.add(conn)
        for conn in woken:
            try:
                conn.pump(cache)
            except Exception:  # one connection's failure must not starve the others
                log.exception("cmbagent hub: delivering to a connection failed")
