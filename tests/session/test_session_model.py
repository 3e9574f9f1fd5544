"""Property: whatever the order of client frames, hub wake-ups, pumps, socket drains, new
commits and trims, each run's stream as the client sees it never has a gap or a
duplicate, and once everything is drained the client holds every event of every run it
follows.

The machine drives a ``Session`` exactly as the WebSocket handler does: after every
call, the frames it queued are taken and "sent" (their bytes count as in flight until
the machine says the socket wrote them). A strict model client
(``session_support.Client``) applies them: a snapshot sets ``last``, an event must be
``last + 1``, a reset must be followed by the run's snapshot.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

import cmbagent_jupyter.hub as hub_module
from cmbagent_jupyter.hub import EventHub
from cmbagent_jupyter.protocol import validate_server_frame
from cmbagent_jupyter.session import RowCache, Session
from engine.store.sqlite import SQLiteStore
from session_support import Client, DirectGateway, append_events, copy_db, drive, finished_run
from support import sqlite_only

UNKNOWN = "no-such-run"
MALFORMED = ["abc", -1, 1.5, True, [1], {"a": 1}, "7"]
CURSORS = ["none", "null", "zero", "valid", "first", "last", "trimmed", "ahead", "malformed"]


class CountingCache(RowCache):
    """The hub's row cache, counting how often a session's read was served from it."""

    seen: collections.Counter

    def get(self, run_id, after, upto):
        rows = super().get(run_id, after, upto)
        self.seen["cache hit" if rows is not None else "cache miss"] += 1
        return rows


class _Conn:
    """What the hub sees of a connection: the session, and news applied as
    ``connection.Connection`` does (between operations), then a pump that sends."""

    def __init__(self, machine):
        self.machine = machine
        self.session = machine.session

    def notify(self, cache, targets, docs) -> None:
        for run_id, last in targets.items():
            self.session.notify(run_id, last)
        self.session.notify_runs(list(docs))
        drive(self.session.pump(cache, budget=self.machine.budget))
        self.machine.deliver()

    def store_status(self, available, since) -> None:
        raise AssertionError("this store always answers")


def make_machine(template: str, work: Path, run_ids: list[str], seen: collections.Counter):
    counter = itertools.count()

    class SessionMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.path = str(work / f"model-{next(counter)}.sqlite")
            shutil.copyfile(template, self.path)
            self.store = SQLiteStore(self.path)
            self.client = Client()
            self.subscribed: set[str] = set()
            self.session = None

        @initialize(cap=st.sampled_from([2048, 6000, 30000, 16 * 2**20]),
                    budget=st.sampled_from([50, 700, 20000]), use_hub=st.booleans(),
                    follow=st.lists(st.tuples(st.sampled_from(run_ids), st.sampled_from(CURSORS)),
                                    max_size=3), data=st.data())
        def start(self, cap, budget, use_hub, follow, data):
            self.budget = budget
            self.hub = EventHub(DirectGateway(self.store))
            self.session = Session(DirectGateway(self.store), server_id="model", heartbeat_interval=1.0,
                                   buffer_cap=cap)
            self.conn = _Conn(self)
            if use_hub:
                self.session.watcher = self.hub.watcher(self.conn)
            self.session.hello()
            self.deliver()
            for run, kind in follow:
                self.subscribe(run, kind, data)

        def teardown(self):
            try:
                if self.session is not None:
                    self.drain_and_check()
            finally:
                self.store.close()

        # -- plumbing ----------------------------------------------------------------------

        def deliver(self) -> list[dict]:
            """Take what the session queued, as the handler's _flush does, and apply it."""
            out = []
            for raw in self.session.take():
                validate_server_frame(raw)
                msg = orjson.loads(raw)
                assert not (msg["type"] == "error" and msg["code"] == "internal"), msg
                self.client.feed(msg)
                out.append(msg)
                seen[msg["type"]] += 1
                if msg["type"] == "reset":
                    seen["reset:" + msg["reason"]] += 1
                elif msg["type"] == "events":
                    seen["events delivered"] += len(msg["events"])
            return out

        def send(self, obj) -> list[dict]:
            drive(self.session.receive(json.dumps(obj)))
            return self.deliver()

        def last(self, run_id: str) -> int:
            return self.store.bounds(run_id)[1]

        def drain_and_check(self) -> None:
            """Let the socket write everything and the hub catch up: the client then holds
            the whole log of every run it follows."""
            s = self.session
            for _ in range(100):
                s.written(s.in_flight)
                for run_id in list(s.subs):
                    s.notify(run_id, self.last(run_id))
                more = drive(s.pump())
                self.deliver()
                if not more and not s.behind() and not s.overflowed and s.in_flight == 0:
                    break
            else:
                raise AssertionError("the session never caught up")
            assert set(s.subs) == self.subscribed
            for run_id in self.subscribed:
                assert self.client.last.get(run_id) == self.last(run_id), (
                    f"client holds {run_id} up to {self.client.last.get(run_id)}, "
                    f"the log is at {self.last(run_id)}")

        # -- client frames -------------------------------------------------------------------

        @rule(run=st.sampled_from(run_ids), kind=st.sampled_from(CURSORS), data=st.data())
        def subscribe(self, run, kind, data):
            first, last = self.store.bounds(run)
            frame = {"type": "subscribe", "run_id": run}
            expect = None  # the reset reason the cursor must get
            if kind == "null":
                frame["after_seq"] = None
            elif kind == "zero":
                frame["after_seq"] = 0
                expect = "trimmed" if first > 1 else None
            elif kind == "valid":
                frame["after_seq"] = data.draw(st.integers(first - 1, last), label="after")
            elif kind == "first":  # the oldest cursor still honoured
                frame["after_seq"] = first - 1
            elif kind == "last":
                frame["after_seq"] = last
            elif kind == "trimmed":
                if first <= 1:
                    return
                frame["after_seq"] = data.draw(st.one_of(st.just(first - 2), st.integers(0, first - 2)),
                                               label="after")
                expect = "trimmed"
            elif kind == "ahead":
                frame["after_seq"] = last + data.draw(st.one_of(st.just(1), st.integers(1, 10**6)),
                                                      label="ahead by")
                expect = "ahead"
            elif kind == "malformed":
                frame["after_seq"] = data.draw(st.sampled_from(MALFORMED), label="cursor")
                expect = "malformed"
            usable = frame.get("after_seq") is not None and expect is None
            if usable:
                self.client.subscribed(run, frame["after_seq"])
            elif expect:
                self.client.expecting_reset(run)
            else:
                self.client.subscribed(run, None)
            out = self.send(frame)
            self.subscribed.add(run)
            if self.session.overflowed:
                # past its buffer cap: nothing is built for the client, only replies go;
                # the subscription starts (a snapshot: after a reset) once the socket drains
                if usable and frame["after_seq"] == last:
                    assert out == [{"type": "events", "run_id": run, "events": []}]
                else:
                    assert out == []
            elif expect:
                assert [(m["type"], m.get("reason")) for m in out] == [("reset", expect), ("snapshot", None)]
                assert out[1]["seq"] == last
            elif not usable:
                assert [m["type"] for m in out] == ["snapshot"] and out[0]["seq"] == last
            elif frame["after_seq"] == last:
                assert out == [{"type": "events", "run_id": run, "events": []}]
            else:
                assert out == []  # the replay is the next pump's

        @rule(run=st.sampled_from(run_ids))
        def unsubscribe(self, run):
            out = self.send({"type": "unsubscribe", "run_id": run})
            assert out == [{"type": "unsubscribed", "run_id": run}]
            self.client.forget(run)
            self.subscribed.discard(run)

        @rule(run=st.sampled_from(run_ids), what=st.sampled_from(["state", "ping", "unknown"]))
        def other_frame(self, run, what):
            if what == "state":
                out = self.send({"type": "request_state", "run_id": run})
                if self.session.overflowed:
                    assert out == []  # owed: sent (once) after the drain
                else:
                    assert [m["type"] for m in out] == ["snapshot"] and out[0]["seq"] == self.last(run)
            elif what == "ping":
                out = self.send({"type": "ping", "id": run})
                assert [(m["type"], m["id"]) for m in out] == [("pong", run)]
            else:
                out = self.send({"type": "subscribe", "run_id": UNKNOWN, "after_seq": 1})
                assert [(m["type"], m["code"]) for m in out] == [("error", "unknown_run")]

        # -- the store changes, the hub and the socket -------------------------------------------

        @rule(run=st.sampled_from(run_ids), k=st.sampled_from([1, 2, 7, 60, 400]),
              then=st.sampled_from(["nothing", "notify", "stale notify", "hub", "notify+pump"]))
        def commit(self, run, k, then):
            last = append_events(self.store, run, k, text="m" * 20)
            if then == "notify":
                self.session.notify(run, last)
            elif then == "stale notify":  # news of an earlier commit arrive late
                self.session.notify(run, last - k)
            elif then == "hub":
                drive(self.hub.poll())
                self.deliver()
            elif then == "notify+pump":
                self.session.notify(run, last)
                drive(self.session.pump(budget=self.budget))
                self.deliver()

        @rule(keep=st.integers(1, 40))
        def trim(self, keep):
            trimmer = SQLiteStore(self.path, max_events_per_run=keep)
            try:
                trimmer.trim()
            finally:
                trimmer.close()

        @rule()
        def hub_poll(self):
            """A real hub tick: reads new rows once into a shared cache, wakes the session."""
            drive(self.hub.poll())
            self.deliver()

        @rule(budget=st.sampled_from([1, 10, 300, None]))
        def pump(self, budget):
            drive(self.session.pump(budget=budget or self.budget))
            self.deliver()

        @rule(fraction=st.sampled_from([0.1, 0.5, 1.0]))
        def written(self, fraction):
            """The socket wrote part of what is in flight; like the handler, pump if that
            ends an overflow."""
            s = self.session
            if s.written(int(s.in_flight * fraction)):
                drive(s.pump(budget=self.budget))
                self.deliver()

        @invariant()
        def bookkeeping(self):
            if self.session is not None:
                assert self.session.in_flight >= 0
                assert set(self.session.subs) == self.subscribed

    return SessionMachine


@sqlite_only  # copies the SQLite file for each example
def test_any_interleaving_gives_gapless_duplicate_free_streams(tmp_path, store, monkeypatch):
    runs = [finished_run(store, name=f"model-{i}", progress=p).id for i, p in enumerate((3, 20, 60))]
    seen: collections.Counter = collections.Counter()
    CountingCache.seen = seen
    monkeypatch.setattr(hub_module, "RowCache", CountingCache)
    # Each example gets its own copy of the store; on tmpfs when there is one (hundreds of
    # SQLite files opened, written and closed would cost fsyncs on a disk).
    work = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else tmp_path))
    try:
        template = str(work / "template.sqlite")
        copy_db(store.path, template)
        c = sqlite3.connect(template)
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()
        run_state_machine_as_test(make_machine(template, work, runs, seen), settings=settings(
            max_examples=100, stateful_step_count=35, deadline=None, database=None,
            suppress_health_check=list(HealthCheck)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # the examples went through every path that matters (thresholds far below typical counts)
    for what, at_least in [("events delivered", 200), ("events", 20), ("reset:slow_consumer", 1),
                           ("reset:trimmed", 1), ("reset:ahead", 1), ("reset:malformed", 1),
                           ("cache hit", 1)]:
        assert seen[what] >= at_least, (what, dict(seen))
