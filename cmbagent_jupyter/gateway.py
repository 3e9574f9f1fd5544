"""The server's one way to the store: every call off the event loop, on a small pool.

The store's drivers block (sqlite3, psycopg). A store call made on Tornado's event loop
would stall every socket and every Jupyter route for as long as the database hangs, so
the server never calls the store itself: it awaits ``gateway.call(fn)``, which runs
``fn(store)`` on a bounded thread pool. Callers choose how long to wait: the REST
handlers give up after a timeout (``StoreUnavailable``: they answer 503), the sockets
wait for the answer (the loop stays free meanwhile) and are exact when it comes. A call
that was given up on goes on in its thread; its result is dropped, so nothing the
caller owns is ever touched from a pool thread.

The gateway also says whether the store answers: it turns *unavailable* when a call
has been in flight longer than ``unavailable_after`` seconds (or failed for want of a
connection), and *available* again when a call succeeds with none stuck any more.
Listeners hear each change (the hub tells every client).

And it opens the store: a server whose store cannot be opened keeps retrying in the
background (``keep_opening``), and every call meanwhile raises ``StoreUnavailable``
with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, Optional, TypeVar

from engine.events import now_iso
from engine.store.base import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Backoff of a call made again after its store connection failed.
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0
#: ``listener(available, since)``: since is the ISO time the store stopped (or resumed) answering.
StatusListener = Callable[[bool, str], None]


class StoreUnavailable(Exception):
    """The store is not open, or did not answer in time; the message says which."""


class StoreGateway:
    """Runs store calls on ``threads`` pool threads and tracks whether the store answers."""

    def __init__(self, store: Optional[Store] = None, *, threads: int = 4,
                 unavailable_after: float = 3.0, name: str = "cmbagent-store",
                 logger: Optional[logging.Logger] = None):
        """``logger``: where outages and recoveries are told (the server's own log)."""
        self.store = store
        self.log = logger or log
        self.unavailable_after = unavailable_after
        #: Why the store is not open (None once it is).
        self.open_error: Optional[str] = None if store is not None else "not opened yet"
        self.available = True
        #: When the store stopped answering (while unavailable).
        self.down_since: Optional[str] = None
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        # ``poll`` keeps a thread for as long as nothing changes: one of its own, not the pool's.
        self._poller = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-poll")
        #: calls under way -> [when the store was last asked (time.monotonic(), the loop's clock)]
        self._in_flight: dict[Future, list[float]] = {}
        self._timer: Optional[asyncio.TimerHandle] = None
        self._listeners: list[StatusListener] = []
        self._opening: Optional[asyncio.Task] = None
        self._closed = False

    # -- opening ------------------------------------------------------------------------

    def open(self, opener: Callable[[], Store]) -> bool:
        """One attempt, in the calling thread (the server's start-up); False if it failed."""
        try:
            self._opened(opener())
        except Exception as exc:
            self.open_error = f"{type(exc).__name__}: {exc}"
            return False
        return True

    def keep_opening(self, opener: Callable[[], Store], first_delay: float = 0.5,
                     max_delay: float = 10.0) -> None:
        """On the loop: retry ``opener`` in the background until the store opens."""
        if self._opening is None and self.store is None and not self._closed:
            self._opening = asyncio.ensure_future(self._keep_opening(opener, first_delay, max_delay))

    async def _keep_opening(self, opener: Callable[[], Store], first_delay: float,
                            max_delay: float) -> None:
        """Retry ``opener`` off the loop with exponential backoff until the store opens."""
        loop = asyncio.get_running_loop()
        delay = first_delay
        while self.store is None and not self._closed:
            await asyncio.sleep(delay)
            try:
                store = await loop.run_in_executor(self._pool, opener)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if reason != self.open_error:
                    self.log.error("cmbagent_jupyter: still cannot open the run store: %s "
                              "(retrying every %g s at most)", reason, max_delay)
                self.open_error = reason
                delay = min(max_delay, delay * 2)
            else:
                self._opened(store)
                self.log.info("cmbagent_jupyter: the run store is open now: %s", store.url)

    def _opened(self, store: Store) -> None:
        self.store = store
        self.open_error = None

    # -- calls ----------------------------------------------------------------------------

    async def call(self, fn: Callable[[Store], T], timeout: Optional[float] = None) -> T:
        """``fn(store)`` on the pool. ``timeout``: give up after that many seconds
        (``StoreUnavailable``). Without one, wait for the answer however long it takes:
        a call that fails for want of a connection (a database that refuses rather than
        hangs) is made again, with backoff, until the store answers. (Only calls that may
        run twice go without a timeout: reads, and commands, whose id applies them once.)"""
        delay = RETRY_FIRST_S
        while True:
            store = self.store
            if self._closed:
                raise StoreUnavailable("the server is shutting down")
            if store is None:
                raise StoreUnavailable(f"the run store is not open: {self.open_error}")
            try:
                return await self._run(lambda asked: fn(store), timeout)
            except Exception as exc:
                if not store.transient(exc):
                    raise
                if timeout is not None:
                    raise StoreUnavailable(f"the run store is unreachable: {exc}") from exc
                self.log.warning("cmbagent_jupyter: a store call failed (%s); trying again in %g s",
                            exc, delay)
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX_S, delay * 2)

    async def poll(self, fn: Callable[[Store], Optional[T]], interval: float) -> T:
        """``fn(store)`` every ``interval`` s in a thread of its own (not the pool's), until it
        returns something truthy; that is returned. (A tailer's idle polling costs no trip
        through the event loop per tick.) Each call to ``fn`` counts on its own for the
        availability. One poll at a time."""
        store = self.store
        if store is None or self._closed:
            raise StoreUnavailable(f"the run store is not open: {self.open_error}")
        stop = threading.Event()

        def repeat(asked: list[float]):
            while not stop.is_set() and not self._closed:
                asked[0] = time.monotonic()
                result = fn(store)
                if result:
                    return result
                stop.wait(interval)
            return None

        try:
            return await self._run(repeat, None, self._poller)
        finally:
            stop.set()  # (cancelled: the thread ends at its next tick)

    async def _run(self, work: Callable[[list[float]], T], timeout: Optional[float],
                   pool: Optional[ThreadPoolExecutor] = None) -> T:
        loop = asyncio.get_running_loop()
        asked = [time.monotonic()]
        cf = (pool or self._pool).submit(work, asked)
        self._in_flight[cf] = asked
        self._arm(loop)
        cf.add_done_callback(lambda f: _call_soon(loop, self._finished, f))
        fut = asyncio.wrap_future(cf, loop=loop)
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise StoreUnavailable(f"the run store did not answer within {timeout:g} s") from None

    # -- availability -----------------------------------------------------------------------

    def add_listener(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Check again when the oldest call in flight reaches ``unavailable_after``."""
        if self._timer is not None or not self.available or not self._in_flight:
            return
        oldest = min(asked[0] for asked in self._in_flight.values())
        self._timer = loop.call_at(oldest + self.unavailable_after, self._check, loop)

    def _stuck_since(self) -> Optional[float]:
        """time.monotonic() of the oldest question the store has left unanswered too long."""
        now = time.monotonic()
        stuck = [asked[0] for asked in self._in_flight.values()
                 if now - asked[0] >= self.unavailable_after]
        return min(stuck) if stuck else None

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        since = self._stuck_since()
        if since is not None:
            self._set(False, _iso(since))
        else:
            self._arm(loop)

    def _finished(self, cf: Future) -> None:
        self._in_flight.pop(cf, None)
        if cf.cancelled():
            return
        exc = cf.exception()
        if exc is not None and self.store is not None and self.store.transient(exc):
            if self.available:  # the store refused a connection: as good as silent
                self._set(False, now_iso())
            return
        if not self.available and self._stuck_since() is None:
            self._set(True, now_iso())
            self._arm(asyncio.get_running_loop())

    def _set(self, available: bool, since: str) -> None:
        if available == self.available:
            return
        self.available = available
        self.down_since = None if available else since
        if available:
            self.log.warning("cmbagent_jupyter: the run store answers again (since %s)", since)
        else:
            self.log.error("cmbagent_jupyter: the run store has not answered since %s "
                      "(clients are told; they catch up when it answers)", since)
        for listener in list(self._listeners):
            try:
                listener(available, since)
            except Exception:
                self.log.exception("cmbagent_jupyter: a store status listener failed")

    async def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until no call is in flight; True if none is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._in_flight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return not self._in_flight

    def close(self) -> None:
        """Stop taking calls; threads stuck in a call end with it (they are not waited for)."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._poller.shutdown(wait=False, cancel_futures=True)


def _iso(monotonic: float) -> str:
    """A time.monotonic() instant as ISO 8601 UTC wall time."""
    wall = time.time() - (time.monotonic() - monotonic)
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="microseconds")


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """From a pool thread: run ``fn`` on the loop, unless the loop is gone (shutdown)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody is left to tell
        pass

