"""``RunWidget``: a run's live DAG with inline controls, in a notebook cell.

The front end (``static/widget.js``, built from ``labextension/src``) talks to the
server extension's WebSocket. Where no server extension serves the page (VS Code,
Colab), it asks the kernel instead, over the widget's comm: the kernel then speaks
the same protocol, through the same ``Session``, ``Connection`` and hub the server uses,
on a thread and event loop of their own, so the kernel never waits on the store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Optional

import anywidget
import orjson
import traitlets

import engine
from engine.store.base import Store

from .gateway import StoreGateway
from .hub import EventHub
from .session import Session

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: How often the kernel-side stream looks for new events (comm fallback only).
COMM_POLL_S = 0.1
#: With a store that pushes notifications: the re-check bounding a lost one's delay.
COMM_RESYNC_S = 5.0


class RunWidget(anywidget.AnyWidget):
    """Shows one run live. ``RunWidget(run_id=...)`` attaches to any run in the store; for
    a run the store does not have (a notebook saved elsewhere), the view says so."""

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"
    run_id = traitlets.Unicode("").tag(sync=True)

    def __init__(self, run_id: Optional[str] = None, *, run: Optional[engine.Run] = None,
                 store: Optional[Store] = None, **kwargs):
        if run is not None:
            run_id, store = run.id, run.store
        if not run_id:
            raise ValueError("RunWidget needs a run_id (or run=)")
        store = store or engine.open_store()
        super().__init__(run_id=run_id, **kwargs)
        self._store = store
        self._link: Optional[_CommLink] = None
        self.on_msg(self._on_frame)

    # -- the comm fallback ----------------------------------------------------------------

    def _on_frame(self, _widget, content, _buffers) -> None:
        if self._link is None:
            self._link = _CommLink(self, self._store)
        self._link.receive(orjson.dumps(content))

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        super().close()

    def __repr__(self) -> str:
        return f"RunWidget(run_id={self.run_id!r})"


def display_run(run: engine.Run) -> RunWidget:
    """How a ``Run`` displays in a notebook: as its live widget. The engine finds this
    through the ``engine.run_display`` entry point (pyproject.toml): it imports no
    Jupyter code itself."""
    return RunWidget(run=run)


class _CommLink:
    """The kernel side of one widget's comm: a thread running an event loop with a hub
    (tailing the store) and the connection of the widget's session. Frames from the comm
    are handed over to that loop in order; the kernel's thread never waits."""

    def __init__(self, widget: RunWidget, store: Store):
        self.widget = widget
        self.loop = asyncio.new_event_loop()
        name = f"cmbagent-widget-{widget.run_id[:8]}"
        self.gateway = StoreGateway(store, threads=1, name=name)
        ready = threading.Event()
        threading.Thread(target=self._main, args=(ready,), daemon=True, name=name).start()
        ready.wait()  # the loop runs (nothing here waits on the store)

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._start, ready)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def _start(self, ready: threading.Event) -> None:
        self.hub = EventHub(self.gateway, tail_interval=COMM_POLL_S, reap_interval=None,
                            recheck_interval=COMM_RESYNC_S)
        session = Session(self.gateway, server_id="kernel", heartbeat_interval=0)
        self.conn = self.hub.connect(session, self._write, self._refuse)
        self.conn.open(self.gateway.down_since)
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.serving = asyncio.ensure_future(self._serve())
        ready.set()

    async def _serve(self) -> None:
        await self.hub.start()  # the hub's cursor before the session's first read of the log
        while True:
            await self.conn.receive(await self.inbox.get())

    def _write(self, frame: bytes) -> None:
        self.widget.send(orjson.loads(frame))
        self.conn.written(len(frame))  # the comm takes it whole, at once

    def _refuse(self, code: int, reason: str) -> None:
        log.warning("cmbagent widget: the comm session asked to close (%s: %s)", code, reason)

    def receive(self, raw: bytes) -> None:
        """From the kernel's thread: a client frame, handled in order on the link's loop."""
        self.loop.call_soon_threadsafe(self.inbox.put_nowait, raw)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop)

    async def _stop(self) -> None:
        self.serving.cancel()
        self.hub.disconnect(self.conn)
        await self.hub.stop()
        self.gateway.close()
        self.loop.stop()
