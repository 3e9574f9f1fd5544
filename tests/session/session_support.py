"""Helpers for driving the sans-I/O ``Session`` directly: runs in a store, new events
appended to them, and a model client that applies the protocol's client rules and fails
on any gap, duplicate or frame it could not have expected."""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Optional

import orjson

from cmbagent_jupyter.protocol import validate_server_frame
from cmbagent_jupyter.session import Session
from engine import Workflow
from engine.events import new_event
from engine.store.base import Commit
from support import finished_run, shutdown_executors, wait_until  # noqa: F401  (re-exported)

SETTLED = ("completed", "failed", "cancelled")
#: Gates of gated runs; the store fixture opens them all so no step thread outlives its test.
GATES: list[threading.Event] = []


# -- runs -------------------------------------------------------------------------------


def gated_run(store, progress: int = 5, name: str = "gated"):
    """A run whose first step waits for ``gate`` before emitting ``progress`` events."""
    gate = threading.Event()
    GATES.append(gate)
    started = threading.Event()
    wf = Workflow(name)

    @wf.step()
    def a(ctx):
        started.set()
        assert gate.wait(30), "gate never opened"
        for i in range(progress):
            ctx.progress((i + 1) / progress)
        return 1

    @wf.step(deps=["a"])
    def b(a):
        return a + 1

    run = wf.start(store=store)
    assert started.wait(30), "step a never started"
    wait_until(lambda: {n["id"]: n["status"] for n in store.snapshot(run.id)["nodes"]}["a"] == "running",
               what="step a's start to be committed")
    return run, gate


def append_events(store, run_id: str, k: int, text: str = "x") -> int:
    """Append ``k`` agent_message events to a finished run (as if it were live); return last seq."""
    _, last = store.bounds(run_id)
    events = [new_event(run_id, last + i + 1, "agent_message",
                        {"node_id": "a", "agent": "tester", "message": f"{text}{last + i + 1}",
                         "role": "assistant"})
              for i in range(k)]
    assert store.apply_commits([Commit(run_id, events)]) == []
    return last + k


def last_seq(store, run_id: str) -> int:
    return store.bounds(run_id)[1]


def copy_db(src: str, dst: str) -> None:
    """Copy a SQLite store file consistently (the backup API; WAL content included)."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


# -- the session and a client model ----------------------------------------------------------


class DirectGateway:
    """The gateway of these tests: ``call(fn)`` runs ``fn(store)`` at once, in the caller's
    thread (the server's gateway runs it on a pool thread, off the event loop)."""

    def __init__(self, store):
        self.store = store

    async def call(self, fn, timeout=None):
        return fn(self.store)

    def add_listener(self, listener) -> None:
        pass  # (the hub's: this store always answers)


def drive(coro):
    """Run a session (or hub) operation to its end, without an event loop: on a
    ``DirectGateway`` it never has to wait for anything."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the operation waited for something a DirectGateway answers at once")


def new_session(store, **kwargs) -> Session:
    kwargs.setdefault("server_id", "test-server")
    kwargs.setdefault("heartbeat_interval", 15.0)
    return Session(DirectGateway(store), **kwargs)


def pump(session: Session, **kwargs) -> bool:
    """``session.pump(...)``, driven to its end: True if more work remains."""
    return drive(session.pump(**kwargs))


def frames(session: Session, ack: bool = True) -> list[dict]:
    """Take what the session has queued, validated against the protocol models, as dicts.

    ``ack``: also tell the session the bytes were written (a fast client)."""
    raw = session.take()
    out = []
    for f in raw:
        validate_server_frame(f)
        out.append(orjson.loads(f))
    if ack:
        session.written(sum(len(f) for f in raw))
    return out


def drain(session: Session, client) -> list[tuple[dict, int]]:
    """Pump and write until the session has nothing more to send, as a fast socket would:
    each frame the client got (checked by ``client``) with its size in bytes."""
    out = []
    while True:
        more = pump(session)
        raw = session.take()
        for f in raw:
            validate_server_frame(f)
            out.extend((msg, len(f)) for msg in client.feed_all([orjson.loads(f)]))
        session.written(sum(len(f) for f in raw))
        if not more and not raw:
            return out


def send(session: Session, obj) -> None:
    drive(session.receive(obj if isinstance(obj, (str, bytes)) else json.dumps(obj)))


class StreamError(AssertionError):
    pass


class Client:
    """The client rules (docs/architecture.md, "The data path"), strictly: a snapshot sets ``last``; every event
    must be exactly ``last + 1`` (a duplicate or a gap is an error, not something to
    skip); after a ``reset`` the next frame about that run must be its snapshot."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.awaiting_snapshot: set[str] = set()
        self.resets: list[tuple[str, str]] = []
        self.log: list[dict] = []

    # what the client itself says
    def subscribed(self, run_id: str, after_seq: Optional[int]) -> None:
        """It sent subscribe; with a usable cursor it holds everything up to it."""
        if after_seq is None:
            self.last.pop(run_id, None)
            self.awaiting_snapshot.add(run_id)
        else:
            self.last[run_id] = after_seq
            self.awaiting_snapshot.discard(run_id)

    def expecting_reset(self, run_id: str) -> None:
        self.last.pop(run_id, None)
        self.awaiting_snapshot.add(run_id)

    def forget(self, run_id: str) -> None:
        self.last.pop(run_id, None)
        self.awaiting_snapshot.discard(run_id)

    # what the server says
    def feed(self, msg: dict) -> None:
        self.log.append(msg)
        t = msg["type"]
        if t == "reset":
            self.resets.append((msg["run_id"], msg["reason"]))
            self.last.pop(msg["run_id"], None)
            self.awaiting_snapshot.add(msg["run_id"])
        elif t == "snapshot":
            run_id = msg["run_id"]
            prev = self.last.get(run_id)
            if prev is not None and msg["seq"] < prev:
                raise StreamError(f"snapshot of {run_id} at seq {msg['seq']} goes back from {prev}")
            self.last[run_id] = msg["seq"]
            self.awaiting_snapshot.discard(run_id)
        elif t == "events":
            run_id = msg["run_id"]
            if run_id in self.awaiting_snapshot:
                raise StreamError(f"events for {run_id} before the snapshot it was owed: {self._seqs(msg)}")
            if run_id not in self.last:
                raise StreamError(f"events for {run_id}, which this client never asked for: "
                                  f"{self._seqs(msg)}")
            for ev in msg["events"]:
                assert ev["run_id"] == run_id
                want = self.last[run_id] + 1
                if ev["seq"] != want:
                    kind = "duplicate" if ev["seq"] < want else "gap"
                    raise StreamError(f"{kind} in {run_id}: got seq {ev['seq']}, expected {want}")
                self.last[run_id] = ev["seq"]

    def feed_all(self, msgs: list[dict]) -> list[dict]:
        for m in msgs:
            self.feed(m)
        return msgs

    @staticmethod
    def _seqs(msg: dict) -> str:
        seqs = [e["seq"] for e in msg["events"]]
        return f"seqs {seqs[0]}..{seqs[-1]}" if seqs else "(empty)"
