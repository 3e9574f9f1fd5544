"""``RunWidget``: a run's live DAG with inline controls, in a notebook cell.

The front end (``static/widget.js``, built from ``labextension/src``) talks to the
server extension's WebSocket. Where no server extension serves the page (VS Code,
Colab), it asks the kernel instead, over the widget's comm: the kernel then speaks
the same protocol, through the same ``Session`` the server uses.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import anywidget
import orjson
import traitlets

import engine
from engine.store.base import Store

from .session import Session

STATIC = Path(__file__).parent / "static"
#: How often the kernel-side stream looks for new events (comm fallback only).
COMM_POLL_S = 0.1
#: With a store that pushes notifications: the re-check bounding a lost one's delay.
COMM_RESYNC_S = 5.0


class RunWidget(anywidget.AnyWidget):
    """Shows one run live. ``RunWidget(run_id=...)`` attaches to any run in the store."""

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
        store.run_doc(run_id)  # unknown runs fail here, clearly
        super().__init__(run_id=run_id, **kwargs)
        self._store = store
        self._comm_session: Optional[Session] = None
        self._comm_lock = threading.Lock()
        self._comm_thread: Optional[threading.Thread] = None
        self._closed = threading.Event()
        self._woken = threading.Event()
        self.on_msg(self._on_frame)

    # -- the comm fallback ----------------------------------------------------------------

    def _on_frame(self, _widget, content, _buffers) -> None:
        with self._comm_lock:
            if self._comm_session is None:
                self._comm_session = Session(self._store, server_id="kernel", heartbeat_interval=0)
            session = self._comm_session
            session.receive(orjson.dumps(content))
            while session.pending_commands:
                cmd = session.pending_commands.popleft()
                session.command_done(self._store.submit_command(
                    cmd.run_id, cmd.action, cmd.node_id, cmd.payload, cmd.command_id))
            self._pump()
        if self._comm_thread is None:
            self._comm_thread = threading.Thread(target=self._stream, daemon=True,
                                                 name=f"cmbagent-widget-{self.run_id[:8]}")
            self._comm_thread.start()

    def _pump(self) -> None:
        session = self._comm_session
        while True:
            more = session.pump()
            for frame in session.take():
                session.written(len(frame))
                self.send(orjson.loads(frame))
            if not more:
                return

    def _stream(self) -> None:
        # A store that pushes notifications wakes this thread; others are polled.
        woken = self._woken
        unsubscribe = self._store.subscribe(
            lambda kind, run_id: woken.set() if kind != "cmbagent_commands" else None)
        idle = COMM_RESYNC_S if self._store.pushes_changes else COMM_POLL_S
        try:
            cursor = self._store.change_cursor()
            while not self._closed.is_set():
                woken.wait(idle)
                woken.clear()
                cursor, changes = self._store.changes_since(cursor)
                if not changes or self._closed.is_set():
                    continue
                with self._comm_lock:
                    for run_id, last in changes.items():
                        self._comm_session.notify(run_id, last)
                    self._pump()
        finally:
            unsubscribe()

    def close(self) -> None:
        self._closed.set()
        self._woken.set()
        super().close()

    def __repr__(self) -> str:
        return f"RunWidget(run_id={self.run_id!r})"
