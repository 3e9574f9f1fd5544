"""The Session when something goes wrong: a client that stops reading, a store that fails
or does not answer, a connection that closes while an operation waits for the store.

Memory: every frame counts against the client's buffer cap; past it nothing is built for
the client (a flood of requests costs no snapshots), what a reset + snapshot replaces is
dropped and owed, and a client whose unread replies alone exceed a quarter of the cap is
closed with a clear code and reason. The hub: no failure (nor a close) leaves a watch
behind holding a dead connection.
"""

from __future__ import annotations

import asyncio
import json

from cmbagent_jupyter.hub import DELIVER_SLICE, EventHub
from cmbagent_jupyter.session import CLOSE_TOO_SLOW, MIN_REPLY_ROOM, Session
from session_support import (
    Client,
    DirectGateway,
    append_events,
    drive,
    finished_run,
    frames,
    last_seq,
    new_session,
    pump,
    send,
)


def types(msgs):
    return [m["type"] for m in msgs]


class CountingStore:
    """The store, counting the snapshots and run lists read through it."""

    def __init__(self, store):
        self.store, self.snapshots, self.run_lists = store, 0, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def snapshot(self, run_id):
        self.snapshots += 1
        return self.store.snapshot(run_id)

    def runs(self):
        self.run_lists += 1
        return self.store.runs()


def unread(s: Session) -> int:
    return s.in_flight + sum(len(f) for f, _ in s._out)


# -- a client that stops reading ------------------------------------------------------------


def test_a_request_state_flood_builds_no_snapshot_past_the_cap(store):
    """300 request_state frames from a client that reads nothing: a handful of snapshots
    are built (until the cap), none after; once it drains, one snapshot per run asked."""
    run = finished_run(store, progress=50)
    other = finished_run(store, name="other")
    counting = CountingStore(store)
    cap = 8192
    s = Session(DirectGateway(counting), server_id="t", heartbeat_interval=15.0, buffer_cap=cap)
    size = len(json.dumps({"type": "snapshot", **store.snapshot(run.id)}))
    assert size < cap // 2
    for i in range(300):
        send(s, {"type": "request_state", "run_id": run.id if i % 2 else other.id})
        frames(s, ack=False)  # handed to the socket, never written
        assert unread(s) <= cap
    built = counting.snapshots
    assert built <= cap // size + 2, f"{built} snapshots built for a client that reads nothing"
    assert s.overflowed
    # the socket drains: each run's state goes once, current
    s.written(s.in_flight)
    pump(s)
    out = frames(s)
    assert sorted((m["type"], m["run_id"], m["seq"]) for m in out) == sorted(
        [("snapshot", run.id, last_seq(store, run.id)), ("snapshot", other.id, last_seq(store, other.id))])
    assert counting.snapshots == built + 2
    assert not s.overflowed and not pump(s) and frames(s) == []


def test_subscriptions_and_run_lists_asked_for_past_the_cap_start_once_drained(store):
    runs = [finished_run(store, name=f"r{i}", progress=30) for i in range(3)]
    counting = CountingStore(store)
    s, client = Session(DirectGateway(counting), server_id="t", heartbeat_interval=15.0,
                        buffer_cap=4096), Client()
    for _ in range(100):  # never read
        send(s, {"type": "subscribe_runs"})
        frames(s, ack=False)
    lists = counting.run_lists
    assert lists <= 4096 // len(json.dumps(store.runs())) + 2
    for r in runs:
        send(s, {"type": "subscribe", "run_id": r.id})
        client.subscribed(r.id, None)
        client.feed_all(frames(s, ack=False))
    assert s.overflowed and unread(s) <= 4096
    s.written(s.in_flight)
    while pump(s) or s.overflowed:
        client.feed_all(frames(s))
        s.written(s.in_flight)
    client.feed_all(frames(s))
    assert all(client.last[r.id] == last_seq(store, r.id) for r in runs)
    assert counting.run_lists == lists + 1  # the whole list once, after the drain
    # and live from there, exactly
    last = append_events(store, runs[0].id, 5)
    s.notify(runs[0].id, last)
    pump(s)
    out = client.feed_all(frames(s))
    assert [e["seq"] for m in out for e in m["events"]] == list(range(last - 4, last + 1))


def test_a_client_that_reads_not_even_its_replies_is_closed(store):
    cap = 4096
    s = new_session(store, buffer_cap=cap)
    s.hello()
    frames(s, ack=False)
    sent = 0
    while s.close_request is None:
        send(s, {"type": "ping", "id": sent})
        frames(s, ack=False)
        sent += 1
        assert unread(s) <= MIN_REPLY_ROOM + cap, unread(s)
        assert sent < 10_000
    code, reason = s.close_request
    assert code == CLOSE_TOO_SLOW == 1008
    assert reason.startswith("client too slow") and str(MIN_REPLY_ROOM) in reason
    assert sent > MIN_REPLY_ROOM // 100  # hundreds of pongs went before that
    send(s, {"type": "ping", "id": "late"})
    assert frames(s) == []  # nothing more for a connection being closed


def test_a_client_reading_its_replies_is_never_closed(store):
    run = finished_run(store)
    s = new_session(store, buffer_cap=2048)
    for i in range(2000):
        send(s, {"type": "ping", "id": i})
        send(s, {"type": "request_state", "run_id": run.id})
        frames(s)  # read at once
    assert s.close_request is None


# -- a store that fails ------------------------------------------------------------------------


class _Conn:
    def __init__(self):
        self.session = None


def hub_and_session(store, **kwargs):
    hub = EventHub(DirectGateway(store))
    conn = _Conn()
    s = conn.session = new_session(store, watcher=hub.watcher(conn), **kwargs)
    return hub, s


def test_a_subscribe_failing_in_any_way_leaves_no_watch(store, monkeypatch):
    """Whatever the failure (not only an unknown run), the hub keeps no entry for the
    connection: it would hold a closed connection and wake it forever."""
    run = finished_run(store)
    hub, s = hub_and_session(store)

    def broken(run_id):
        raise RuntimeError("the store broke")

    monkeypatch.setattr(store, "run_doc", broken)
    send(s, {"type": "subscribe", "run_id": run.id})
    (err,) = frames(s)
    assert (err["type"], err["code"]) == ("error", "internal")
    assert hub.by_run == {} and s.subs == {}
    monkeypatch.undo()
    monkeypatch.setattr(store, "bounds", broken)  # after the visibility check
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": 1})
    assert types(frames(s)) == ["error"]
    assert hub.by_run == {} and s.subs == {}
    monkeypatch.undo()
    send(s, {"type": "subscribe", "run_id": run.id})
    assert types(frames(s)) == ["snapshot"]
    assert set(hub.by_run) == {run.id}


def test_a_resubscribe_that_fails_keeps_the_subscription_it_replaces(store, monkeypatch):
    run = finished_run(store)
    hub, s = hub_and_session(store)
    send(s, {"type": "subscribe", "run_id": run.id})
    frames(s)
    monkeypatch.setattr(store, "bounds", lambda run_id: 1 / 0)
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": 1})
    assert types(frames(s)) == ["error"]
    assert set(hub.by_run) == {run.id} and run.id in s.subs


class HeldGateway(DirectGateway):
    """Calls wait until the test lets them through (a store that does not answer)."""

    def __init__(self, store):
        super().__init__(store)
        self.release = asyncio.Event()
        self.waiting = 0

    async def call(self, fn, timeout=None):
        self.waiting += 1
        await self.release.wait()
        self.waiting -= 1
        return fn(self.store)


def test_a_connection_closed_while_its_subscribe_waits_leaves_nothing_behind(store):
    run = finished_run(store)

    async def scenario():
        gw = HeldGateway(store)
        hub = EventHub(gw)
        conn = _Conn()
        s = conn.session = Session(gw, server_id="t", heartbeat_interval=15.0,
                                   watcher=hub.watcher(conn))
        op = asyncio.ensure_future(s.receive(json.dumps({"type": "subscribe", "run_id": run.id})))
        while not gw.waiting:
            await asyncio.sleep(0)
        assert set(hub.by_run) == {run.id}  # live before the backlog is read
        s.close()  # the socket closed meanwhile
        gw.release.set()
        await op
        return hub, s

    hub, s = asyncio.run(scenario())
    assert hub.by_run == {} and s.subs == {} and frames(s) == []


def test_pings_are_answered_at_once_while_the_store_does_not_answer(store):
    """Frames wait for the store in order; only a ping skips ahead, and only while the
    server says the store is unavailable (so the client keeps its socket)."""
    run = finished_run(store)
    s = new_session(store)
    ping = json.dumps({"type": "ping", "id": 1})
    assert not s.answer_now(ping)  # the store answers: everything in order
    s.store_status(False, "2030-01-01T00:00:00+00:00")
    assert not s.answer_now(json.dumps({"type": "request_state", "run_id": run.id}))
    assert not s.answer_now(b"not json")  # answered (with an error) in its turn
    assert s.answer_now(ping)
    down, pong = frames(s)
    assert down == {"type": "store_status", "available": False, "since": "2030-01-01T00:00:00+00:00"}
    assert (pong["type"], pong["id"]) == ("pong", 1)
    s.store_status(True, "2030-01-01T00:00:20+00:00")
    assert frames(s)[-1] == {"type": "store_status", "available": True,
                             "since": "2030-01-01T00:00:20+00:00"}
    assert not s.answer_now(ping)


def test_a_long_pass_tells_the_connections_ahead_of_it_what_was_committed_meanwhile(store):
    """The hub tells thousands of connections of new events one slice at a time. An event
    committed during the pass reaches the connections still ahead in it, in that pass
    (not a whole pass later), and those already told in the next: every follower hears
    of it once the poll returns."""
    run = finished_run(store)
    first = last_seq(store, run.id)
    hub = EventHub(DirectGateway(store))
    committed = []

    class Follower:
        def __init__(self):
            self.session = self
            self.told: list[int] = []

        def cursor(self, run_id):
            return first

        def notify(self, cache, targets, docs, deleted=()):
            if not committed:  # the pass's first connection: a commit lands meanwhile
                committed.append(append_events(store, run.id, 3))
            if run.id in targets:
                self.told.append(targets[run.id])

        def store_status(self, available, since):
            pass

    followers = [Follower() for _ in range(2 * DELIVER_SLICE + 1)]
    for f in followers:
        hub.watcher(f).watch(run.id)
    hub.cursor = store.change_cursor()
    append_events(store, run.id, 1)
    drive(hub.poll())
    last = last_seq(store, run.id)
    assert last == first + 4
    assert all(f.told[-1] == last for f in followers)  # everyone, by the end of the poll
    told_in_first_pass = [f.told[0] for f in followers]
    # past the first slice, the first pass already carries the later commit
    assert told_in_first_pass.count(last) >= DELIVER_SLICE
