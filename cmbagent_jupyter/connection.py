"""One client's connection: its ``Session`` driven in order, its frames written out.

The WebSocket handler and the widget's comm fallback move frames between a transport and
a ``Session`` the same way; this is that way, once:

- client frames are handled one at a time, in the order they came, each to its end
  (store reads included) before the next; the hub's news (``notify``) is applied between
  operations and followed by a pump, never inside an operation;
- while the store does not answer, a ping is answered at once, ahead of frames waiting
  for the store, so the client knows the server is alive (its other frames are answered,
  in order, when the store answers again);
- after each step the frames the session queued are written; their bytes count as in
  flight until the transport calls ``written``;
- a session that asks to be closed (a client too slow even for its replies) is closed
  with its code and reason.

Everything runs on one asyncio loop (the server's, or the widget's own thread's).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable, Iterable, Optional

from .gateway import StoreUnavailable
from .session import RowCache, Session

log = logging.getLogger(__name__)

#: Client frames waiting at most; beyond that ``receive`` waits (the transport stops reading).
INBOX = 64
#: Seconds before a pump that failed (the store raised) is tried again.
PUMP_RETRY_S = 1.0


class Connection:
    def __init__(self, session: Session, write: Callable[[bytes], None],
                 close: Callable[[int, str], None]):
        """``write(frame)`` sends a frame and calls ``written(len(frame))`` once it is out;
        ``close(code, reason)`` ends the transport."""
        self.session = session
        self._write = write
        self._close = close
        self._inbox: deque[str | bytes] = deque()
        self._room = asyncio.Event()
        self._work = asyncio.Event()
        self._pump_wanted = False
        self._cache: Optional[RowCache] = None
        self._targets: dict[str, int] = {}
        self._docs: list[dict] = []
        self._deleted: list[str] = []
        self.closed = False
        self._idle = False  # the worker waits for work: the hub may deliver in its stead
        self._task = asyncio.ensure_future(self._run())

    def open(self, store_down_since: Optional[str] = None) -> None:
        """Say hello (and that the store does not answer, when it does not)."""
        self.session.hello()
        if store_down_since is not None:
            self.session.store_status(False, store_down_since)
        self._flush()

    async def receive(self, raw: str | bytes) -> None:
        """A client frame: answered in its turn (waits while the inbox is full)."""
        if self.closed:
            return
        if self.session.answer_now(raw):
            self._flush()
            return
        while len(self._inbox) >= INBOX and not self.closed:
            self._room.clear()
            await self._room.wait()
        self._inbox.append(raw)
        self._work.set()

    def notify(self, cache: Optional[RowCache], targets: dict[str, int], docs: Iterable[dict],
               deleted: Iterable[str] = ()) -> None:
        """The hub's news: runs with events committed up to a seq, run documents changed,
        runs deleted."""
        for run_id, last in targets.items():
            if last > self._targets.get(run_id, 0):
                self._targets[run_id] = last
        self._docs.extend(docs)
        self._deleted.extend(deleted)
        if cache is not None:
            self._cache = cache
        if self._idle and not self._inbox and self._deliver_now():
            return
        self._pump_wanted = True
        self._work.set()

    def _deliver_now(self) -> bool:
        """While the worker waits for work: apply the news and queue what the hub's cache
        holds, here, in the hub's pass over its connections (no task switch per
        connection). True when nothing is left for the worker."""
        if self.closed or self._cache is None or self._docs or self._deleted:
            return False
        targets, self._targets = self._targets, {}
        for run_id, last in targets.items():
            self.session.notify(run_id, last)
        done = self.session.pump_cached(self._cache)
        self._flush()
        return done

    def store_status(self, available: bool, since: str) -> None:
        self.session.store_status(available, since)
        if not available:  # the pings already waiting behind a frame that waits for the store
            self._inbox = deque(raw for raw in self._inbox if not self.session.answer_now(raw))
            self._room.set()
        self._flush()

    def written(self, nbytes: int) -> None:
        if self.session.written(nbytes) and not self.closed:
            self._pump_wanted = True
            self._work.set()

    def close(self) -> None:
        """The transport is gone: leave the hub, stop working."""
        if self.closed:
            return
        self.closed = True
        self.session.close()
        self._room.set()
        self._task.cancel()

    # -- the worker ------------------------------------------------------------------------

    async def _run(self) -> None:
        session = self.session
        while not self.closed:
            self._idle = True
            await self._work.wait()
            self._idle = False
            self._work.clear()
            while not self.closed:
                if self._inbox:
                    raw = self._inbox.popleft()
                    self._room.set()
                    await session.receive(raw)
                    self._pump_wanted = True  # e.g. the replay a subscribe with a cursor owes
                elif self._pump_wanted:
                    self._pump_wanted = False
                    await self._pump()
                else:
                    break
                self._flush()
                await asyncio.sleep(0)  # one step at a time: other connections go between

    async def _pump(self) -> None:
        session = self.session
        targets, self._targets = self._targets, {}
        docs, self._docs = self._docs, []
        deleted, self._deleted = self._deleted, []
        cache = self._cache  # the hub's: kept, so a pump after a drain reads from it too
        for run_id, last in targets.items():
            session.notify(run_id, last)
        if docs:
            session.notify_runs(docs)
        if deleted:
            session.notify_deleted(deleted)
        try:
            if await session.pump(cache):
                self._pump_wanted = True
        except StoreUnavailable:  # shutting down
            return
        except Exception:  # the store failed: keep the socket, try again shortly
            log.exception("cmbagent: delivering to a client failed; retrying in %g s", PUMP_RETRY_S)
            asyncio.get_running_loop().call_later(PUMP_RETRY_S, self._retry)

    def _retry(self) -> None:
        if not self.closed:
            self._pump_wanted = True
            self._work.set()

    def _flush(self) -> None:
        if self.closed:
            return
        for frame in self.session.take():
            self._write(frame)
        request = self.session.close_request
        if request is not None:
            self._close(*request)
            self.close()
