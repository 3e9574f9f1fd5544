"""``client.events(run_id)``: the applied events (and markers) of one run, to the application."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable, Optional

from .follower import Item, Marker

_END = object()


class EventStream:
    """``async for item in client.events(run_id)``: applied events (and markers), in order.

    Registered when created, so nothing applied after ``client.events()`` returned is
    missed. Ends when the client closes or the run is unsubscribed; raises
    ``RunNotFound`` if the server does not know the run. ``await stream.next(timeout)``
    is the same with a timeout (``asyncio.TimeoutError``; no item is lost by it).
    """

    def __init__(self, run_id: str, markers: bool, detach: Callable[["EventStream"], None]):
        self.run_id, self.markers = run_id, markers
        self._detach = detach  # stops the client delivering to this stream
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
        self._detach(self)
        self._end()

    async def aclose(self) -> None:
        self.close()
