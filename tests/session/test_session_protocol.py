"""The sans-I/O Session, driven directly: no server, no socket, no event loop.

Each test feeds client frames in (``receive``), tells the session about new commits
(``notify``) as the hub would, asks it for output (``pump`` / ``take``), and checks the
frames with the strict client model of ``session_support.Client``.
"""

from __future__ import annotations

import asyncio
import json

import pytest

import engine
import orjson

from cmbagent_jupyter.session import (
    BLOCK,
    EVENTS_FRAME_BYTES,
    EVENTS_WINDOW,
    MAX_EVENTS_PER_FRAME,
    SLOW_CONSUMER_S,
    RowCache,
    Session,
)
from session_support import (
    Client,
    DirectGateway,
    drive,
    append_events,
    drain,
    finished_run,
    frames,
    gated_run,
    last_seq,
    new_session,
    pump,
    send,
)


def types(msgs):
    return [m["type"] for m in msgs]


def event_seqs(msgs, run_id=None):
    return [e["seq"] for m in msgs if m["type"] == "events" and (run_id is None or m["run_id"] == run_id)
            for e in m["events"]]


def test_hello_first(store):
    s = new_session(store, server_id="srv-1", heartbeat_interval=7.5)
    s.hello()
    (hello,) = frames(s)
    assert hello == {"type": "hello", "protocol": 1, "server_id": "srv-1", "heartbeat_interval": 7.5}


# -- subscribe ---------------------------------------------------------------------------------


def test_subscribe_without_cursor_snapshot_then_live(store):
    run, gate = gated_run(store, progress=5)
    s, client = new_session(store), Client()
    send(s, {"type": "subscribe", "run_id": run.id})
    client.subscribed(run.id, None)
    (snap,) = client.feed_all(frames(s))
    assert snap["type"] == "snapshot" and snap["run_id"] == run.id
    assert snap["seq"] == last_seq(store, run.id)
    assert {n["id"]: n["status"] for n in snap["nodes"]} == {"a": "running", "b": "pending"}
    assert snap["edges"] == [{"source": "a", "target": "b"}]

    gate.set()
    assert run.wait(30) == "completed"
    # nothing moves until the hub says so
    assert not pump(s) and frames(s) == []
    last = last_seq(store, run.id)
    s.notify(run.id, last)
    assert s.behind()
    more = pump(s)
    out = client.feed_all(frames(s))
    assert not more and not s.behind()
    assert types(out) == ["events"]
    assert event_seqs(out) == list(range(snap["seq"] + 1, last + 1))
    assert out[-1]["events"][-1]["event_type"] == "workflow_completed"
    assert client.last[run.id] == last
    # the events are the log's, byte for byte in meaning
    assert out[0]["events"] == run.events(after_seq=snap["seq"]).dicts()


def test_stale_or_repeated_notify_sends_nothing_twice(store):
    run = finished_run(store)
    s, client = new_session(store), Client()
    send(s, {"type": "subscribe", "run_id": run.id})
    client.subscribed(run.id, None)
    client.feed_all(frames(s))
    last = append_events(store, run.id, 3)
    s.notify(run.id, last - 2)
    pump(s)
    s.notify(run.id, last)
    s.notify(run.id, last - 1)  # older news: ignored
    pump(s)
    s.notify(run.id, last)
    pump(s)
    out = client.feed_all(frames(s))
    assert event_seqs(out) == [last - 2, last - 1, last]


@pytest.mark.parametrize("cursor", [0, 1, 5, "last-1"])
def test_subscribe_with_cursor_replays_exactly_after_it(store, cursor):
    run = finished_run(store)
    last = last_seq(store, run.id)
    after = last - 1 if cursor == "last-1" else cursor
    s, client = new_session(store), Client()
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": after})
    client.subscribed(run.id, after)
    assert frames(s) == []  # the replay is the pump's job (the handler pumps after every frame)
    assert s.behind()
    pump(s)
    out = client.feed_all(frames(s))
    assert types(out) == ["events"]
    assert event_seqs(out) == list(range(after + 1, last + 1))
    assert out[0]["events"] == run.events(after_seq=after).dicts()
    # then live
    new_last = append_events(store, run.id, 4)
    s.notify(run.id, new_last)
    pump(s)
    assert event_seqs(client.feed_all(frames(s))) == list(range(last + 1, new_last + 1))


def test_cursor_at_last_gets_an_empty_events_frame(store):
    run = finished_run(store)
    last = last_seq(store, run.id)
    s, client = new_session(store), Client()
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": last})
    client.subscribed(run.id, last)
    assert client.feed_all(frames(s)) == [{"type": "events", "run_id": run.id, "events": []}]
    assert not pump(s) and frames(s) == []
    new_last = append_events(store, run.id, 2)
    s.notify(run.id, new_last)
    pump(s)
    assert event_seqs(client.feed_all(frames(s))) == [last + 1, last + 2]


def test_trimmed_cursor_gets_reset_then_snapshot(store, db_url):
    run = finished_run(store, progress=30)
    last = last_seq(store, run.id)
    trimmer = engine.open_store(db_url, max_events_per_run=10)
    assert trimmer is not store
    assert trimmer.trim() > 0
    first, _ = store.bounds(run.id)
    assert first == last - 9
    s, client = new_session(store), Client()
    for after in (0, 3, first - 2):  # all before what is still stored
        send(s, {"type": "subscribe", "run_id": run.id, "after_seq": after})
        client.expecting_reset(run.id)
        out = client.feed_all(frames(s))
        assert types(out) == ["reset", "snapshot"]
        assert out[0] == {"type": "reset", "run_id": run.id, "reason": "trimmed"}
        assert out[1]["seq"] == last
        assert not pump(s) and frames(s) == []
    # the oldest cursor still stored is honoured
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": first - 1})
    client.subscribed(run.id, first - 1)
    pump(s)
    assert event_seqs(client.feed_all(frames(s))) == list(range(first, last + 1))


def test_trimmed_under_a_live_subscription(store, db_url):
    """Events trimmed between the notify and the read: reset, never a gap."""
    run = finished_run(store)
    s, client = new_session(store), Client()
    last = last_seq(store, run.id)
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": last})
    client.subscribed(run.id, last)
    client.feed_all(frames(s))
    new_last = append_events(store, run.id, 40)
    s.notify(run.id, new_last)
    engine.open_store(db_url, max_events_per_run=5).trim()
    pump(s)
    out = client.feed_all(frames(s))
    assert types(out) == ["reset", "snapshot"]
    assert out[0]["reason"] == "trimmed" and out[1]["seq"] == new_last


def test_future_cursor_gets_reset_ahead(store):
    run = finished_run(store)
    last = last_seq(store, run.id)
    s, client = new_session(store), Client()
    for after in (last + 1, last + 1000, 2**63, 10**30):
        send(s, {"type": "subscribe", "run_id": run.id, "after_seq": after})
        client.expecting_reset(run.id)
        out = client.feed_all(frames(s))
        assert types(out) == ["reset", "snapshot"]
        assert out[0] == {"type": "reset", "run_id": run.id, "reason": "ahead"}
        assert out[1]["seq"] == last
    new_last = append_events(store, run.id, 1)
    s.notify(run.id, new_last)
    pump(s)
    assert event_seqs(client.feed_all(frames(s))) == [new_last]


@pytest.mark.parametrize("cursor", ["abc", -1, 1.5, True, False, "3", [], {}, 1e400])
def test_malformed_cursor_gets_reset_malformed(store, cursor):
    run = finished_run(store)
    s, client = new_session(store), Client()
    cursor_json = "1e400" if cursor == 1e400 else json.dumps(cursor)  # 1e400: inf in Python
    send(s, '{"type":"subscribe","run_id":"%s","after_seq":%s}' % (run.id, cursor_json))
    client.expecting_reset(run.id)
    out = client.feed_all(frames(s))
    assert types(out) == ["reset", "snapshot"]
    assert out[0] == {"type": "reset", "run_id": run.id, "reason": "malformed"}
    assert out[1]["seq"] == last_seq(store, run.id)
    assert run.id in s.subs  # and it is live from the snapshot on
    new_last = append_events(store, run.id, 2)
    s.notify(run.id, new_last)
    pump(s)
    assert event_seqs(client.feed_all(frames(s))) == [new_last - 1, new_last]


def test_explicit_null_cursor_is_no_cursor(store):
    run = finished_run(store)
    s = new_session(store)
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": None})
    assert types(frames(s)) == ["snapshot"]


def test_resubscribe_replaces_the_cursor(store):
    run = finished_run(store)
    last = last_seq(store, run.id)
    s, client = new_session(store), Client()
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": last - 3})
    client.subscribed(run.id, last - 3)
    pump(s)
    client.feed_all(frames(s))
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": last - 1})
    client.subscribed(run.id, last - 1)
    pump(s)
    assert event_seqs(client.feed_all(frames(s))) == [last]
    assert len(s.subs) == 1


# -- batching and slow consumers ----------------------------------------------------------------


def test_a_thousand_new_events_go_out_in_a_handful_of_frames(store):
    run, gate = gated_run(store, progress=1000)
    s, client = new_session(store), Client()
    send(s, {"type": "subscribe", "run_id": run.id})
    client.subscribed(run.id, None)
    (snap,) = client.feed_all(frames(s))
    gate.set()
    assert run.wait(30) == "completed"
    last = last_seq(store, run.id)
    assert last - snap["seq"] >= 1000
    s.notify(run.id, last)
    got = drain(s, client)
    out = [m for m, _ in got]
    assert all(m["type"] == "events" for m in out)
    # as few frames as the frame size allows
    assert 1 <= len(out) <= sum(n for _, n in got) // EVENTS_FRAME_BYTES + 1, \
        f"{last - snap['seq']} events took {len(out)} frames"
    assert event_seqs(out) == list(range(snap["seq"] + 1, last + 1))


def test_a_huge_backlog_is_split_into_bounded_frames(store):
    run = finished_run(store)
    base = last_seq(store, run.id)
    last = append_events(store, run.id, MAX_EVENTS_PER_FRAME + 500)
    s, client = new_session(store), Client()
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": 0})
    client.subscribed(run.id, 0)
    got = drain(s, client)
    out = [m for m, _ in got]
    assert all(len(m["events"]) <= MAX_EVENTS_PER_FRAME for m in out)
    assert all(n <= EVENTS_FRAME_BYTES + 200 or len(m["events"]) == 1 for m, n in got)
    assert event_seqs(out) == list(range(1, last + 1)) and last > base


def test_a_subscriber_holds_a_window_of_unwritten_events_not_its_whole_backlog(store):
    """A socket that has not written yet is given at most a window (plus one frame) of a
    long backlog; the rest follows as it writes, in order, without a reset."""
    run = finished_run(store)
    last = append_events(store, run.id, 20000, text="z" * 40)
    # owed far more than its cap, but writing: not a slow consumer, never reset
    s, client = new_session(store, buffer_cap=256 * 1024), Client()
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": 0})
    client.subscribed(run.id, 0)
    seqs = []
    while True:
        more = pump(s)
        out = client.feed_all(frames(s, ack=False))
        assert s.in_flight <= EVENTS_WINDOW + EVENTS_FRAME_BYTES + 200
        assert not s.overflowed and all(m["type"] == "events" for m in out)
        seqs += event_seqs(out)
        if not out and not more:
            break
        s.written(s.in_flight)  # the socket catches up; the session goes on
    assert seqs == list(range(1, last + 1))


def test_slow_consumer_is_dropped_then_reset_never_a_gap(store):
    now = [100.0]
    run = finished_run(store)
    s, client = new_session(store, buffer_cap=4096, clock=lambda: now[0]), Client()
    last = last_seq(store, run.id)
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": last})
    client.subscribed(run.id, last)
    client.feed_all(frames(s, ack=False))
    # the client reads a little, then stops reading: nothing is ever `written`
    a = append_events(store, run.id, 10)
    s.notify(run.id, a)
    pump(s)
    first_batch = client.feed_all(frames(s, ack=False))
    assert event_seqs(first_batch) == list(range(a - 9, a + 1))
    assert s.in_flight >= s.events_window  # the socket holds all it is given at a time
    b = append_events(store, run.id, 1000, text="y" * 50)
    s.notify(run.id, b)
    # a socket that has just stopped writing is not slow yet: it is simply given nothing more
    assert pump(s) is False
    assert not s.overflowed and frames(s, ack=False) == []
    now[0] += SLOW_CONSUMER_S  # ... but one that wrote nothing for this long, owed > its cap, is
    assert pump(s) is False
    assert s.overflowed
    assert frames(s, ack=False) == []  # the 1,000 events were dropped, not queued
    for _ in range(3):  # still not drained: still nothing, however often the hub calls
        c = append_events(store, run.id, 10)
        s.notify(run.id, c)
        assert pump(s) is False and frames(s, ack=False) == []
    # the socket drains
    s.written(s.in_flight)
    assert s.in_flight == 0
    pump(s)
    out = client.feed_all(frames(s))
    assert types(out) == ["reset", "snapshot"]
    assert out[0] == {"type": "reset", "run_id": run.id, "reason": "slow_consumer"}
    assert out[1]["seq"] == last_seq(store, run.id)
    assert not s.overflowed and not s.behind()
    # and live again, consecutive from the snapshot
    d = append_events(store, run.id, 5)
    s.notify(run.id, d)
    pump(s)
    assert event_seqs(client.feed_all(frames(s))) == list(range(d - 4, d + 1))


def test_slow_consumer_keeps_control_frames(store):
    """Dropping a backlog drops events only: a pong queued in the same burst still goes out."""
    run = finished_run(store)
    s, client = new_session(store, buffer_cap=2048), Client()
    last = last_seq(store, run.id)
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": last})
    client.subscribed(run.id, last)
    client.feed_all(frames(s, ack=False))
    send(s, {"type": "ping", "id": 42})
    b = append_events(store, run.id, 500)
    s.notify(run.id, b)
    pump(s)
    out = client.feed_all(frames(s, ack=False))
    assert types(out) == ["pong"] and out[0]["id"] == 42
    s.written(s.in_flight)
    pump(s)
    assert types(client.feed_all(frames(s))) == ["reset", "snapshot"]


# -- other frames ------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [
    {"type": "subscribe", "run_id": "no-such-run"},
    {"type": "subscribe", "run_id": "no-such-run", "after_seq": 3},
    {"type": "request_state", "run_id": "no-such-run"},
])
def test_unknown_run_is_an_error(store, frame):
    finished_run(store)
    s = new_session(store)
    send(s, frame)
    (err,) = frames(s)
    assert err["type"] == "error" and err["code"] == "unknown_run" and err["ref"] == "no-such-run"
    assert s.subs == {} and not pump(s)


def test_unknown_run_command_is_an_error_and_not_queued(store):
    s = new_session(store)
    send(s, {"type": "command", "command_id": "c-1", "run_id": "nope", "action": "pause"})
    (err,) = frames(s)
    assert (err["type"], err["code"], err["ref"]) == ("error", "unknown_run", "c-1")
    assert store.command_status("c-1") is None


def test_unsubscribe_stops_delivery(store):
    run = finished_run(store)
    s, client = new_session(store), Client()
    send(s, {"type": "subscribe", "run_id": run.id})
    client.subscribed(run.id, None)
    client.feed_all(frames(s))
    send(s, {"type": "unsubscribe", "run_id": run.id})
    assert frames(s) == [{"type": "unsubscribed", "run_id": run.id}]
    client.forget(run.id)
    assert run.id not in s.subs
    s.notify(run.id, append_events(store, run.id, 5))
    assert not pump(s) and frames(s) == []
    # unsubscribing from what one does not follow is still answered
    send(s, {"type": "unsubscribe", "run_id": "whatever"})
    assert frames(s) == [{"type": "unsubscribed", "run_id": "whatever"}]


def test_request_state_sends_a_fresh_snapshot(store):
    run = finished_run(store)
    s, client = new_session(store), Client()
    send(s, {"type": "request_state", "run_id": run.id})
    (snap,) = client.feed_all(frames(s))
    assert snap["type"] == "snapshot" and snap["seq"] == last_seq(store, run.id)
    assert snap == {"type": "snapshot", **store.snapshot(run.id)}
    assert s.subs == {}  # a snapshot is not a subscription
    # while subscribed it moves the cursor: no event is sent twice
    send(s, {"type": "subscribe", "run_id": run.id, "after_seq": snap["seq"]})
    client.subscribed(run.id, snap["seq"])
    client.feed_all(frames(s))
    last = append_events(store, run.id, 3)
    send(s, {"type": "request_state", "run_id": run.id})
    s.notify(run.id, last)
    pump(s)
    out = client.feed_all(frames(s))
    assert types(out) == ["snapshot"] and out[0]["seq"] == last


def test_ping_pong(store):
    s = new_session(store)
    for pid in ("abc", 7, None):
        send(s, {"type": "ping", "id": pid})
        (pong,) = frames(s)
        assert pong["type"] == "pong" and pong["id"] == pid and pong["server_time"].endswith("+00:00")
    send(s, {"type": "ping"})
    assert frames(s)[0]["id"] is None


def test_commands_are_recorded_and_acknowledged(store):
    done = finished_run(store)
    s = new_session(store)
    send(s, {"type": "command", "command_id": "c-1", "run_id": done.id, "action": "pause"})
    (refused,) = frames(s)
    assert refused["type"] == "ack" and refused["command_id"] == "c-1" and refused["ok"] is False
    assert refused["code"] == "illegal_command" and "error" in refused and "state" not in refused
    run, gate = gated_run(store)
    for _ in range(2):  # the same command id twice: the same ack, applied once
        send(s, {"type": "command", "command_id": "c-2", "run_id": run.id, "action": "pause"})
        (ack,) = frames(s)
        assert (ack["type"], ack["command_id"], ack["ok"]) == ("ack", "c-2", True)
    assert store.command_status("c-2") is not None
    gate.set()


@pytest.mark.parametrize("raw,code", [
    (b"not json", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[1,2]", "bad_frame"),
    (b'"subscribe"', "bad_frame"),
    (b"{}", "bad_frame"),
    (b'{"type": 5}', "bad_frame"),
    (b'{"type": "nope"}', "unknown_type"),
    (b'{"type": "subscribe"}', "invalid"),
    (b'{"type": "subscribe", "run_id": 5}', "invalid"),
    (b'{"type": "subscribe", "run_id": "r", "extra": 1}', "invalid"),
    (b'{"type": "command", "command_id": "x", "run_id": "r", "action": "explode"}', "invalid"),
    (b'{"type": "command", "command_id": "", "run_id": "r", "action": "pause"}', "invalid"),
    (b'{"type": "command", "run_id": "r", "action": "pause"}', "invalid"),
    (b'{"type": "ping", "id": [1]}', "invalid"),
])
def test_bad_frames_get_an_error_and_change_nothing(store, raw, code):
    s = new_session(store)
    send(s, raw)
    (err,) = frames(s)
    assert err["type"] == "error" and err["code"] == code, err
    assert s.subs == {} and not s.watching_runs


def test_run_list_subscription(store):
    r1 = finished_run(store, name="one")
    r2 = finished_run(store, name="two")
    s = new_session(store)
    send(s, {"type": "subscribe_runs"})
    (runs,) = frames(s)
    assert runs["type"] == "runs" and [r["id"] for r in runs["runs"]] == [r2.id, r1.id]
    # a version the client already has is not sent again; a new one is, once
    s.notify_runs([store.run_doc(r1.id)])
    assert frames(s) == []
    newer = dict(store.run_doc(r1.id), updated_at="2099-01-01T00:00:00.000000+00:00")
    s.notify_runs([newer, newer])
    (changed,) = frames(s)
    assert changed == {"type": "run_changed", "run": newer}
    send(s, {"type": "unsubscribe_runs"})
    assert frames(s) == [{"type": "unsubscribed"}]
    s.notify_runs([store.run_doc(r1.id)])
    assert frames(s) == []


def test_run_filter_hides_runs_like_unknown_ones(store):
    mine = finished_run(store, name="mine")
    theirs = finished_run(store, name="theirs")
    s = new_session(store, run_filter=lambda doc: doc["name"] == "mine")
    send(s, {"type": "subscribe_runs"})
    assert [r["id"] for r in frames(s)[0]["runs"]] == [mine.id]
    for frame in ({"type": "subscribe", "run_id": theirs.id}, {"type": "request_state", "run_id": theirs.id},
                  {"type": "command", "command_id": "k", "run_id": theirs.id, "action": "cancel"}):
        send(s, frame)
        (err,) = frames(s)
        assert err["code"] == "unknown_run"
    assert s.subs == {}


def test_watcher_is_told_live_before_the_backlog_is_read(store):
    """The hub learns of a subscription before the session reads the log."""
    run = finished_run(store)
    calls = []

    class Spy:
        def watch(self, run_id):
            calls.append(("watch", run_id))

        def unwatch(self, run_id):
            calls.append(("unwatch", run_id))

        def watch_runs(self, on):
            calls.append(("runs", on))

    real_bounds = store.bounds

    def bounds(run_id):
        calls.append(("read", run_id))
        return real_bounds(run_id)

    store.bounds = bounds
    try:
        s = new_session(store, watcher=Spy())
        send(s, {"type": "subscribe", "run_id": run.id, "after_seq": 1})
        send(s, {"type": "subscribe", "run_id": "nope"})
        send(s, {"type": "subscribe_runs"})
        s.close()
    finally:
        del store.bounds
    assert calls[:2] == [("watch", run.id), ("read", run.id)]
    assert calls[2] == ("watch", "nope")
    assert ("unwatch", "nope") in calls  # a failed subscribe leaves no watch behind
    assert calls[-2:] == [("unwatch", run.id), ("runs", False)]


def test_a_failing_handler_answers_internal_and_keeps_going(store, monkeypatch):
    s = new_session(store)

    def boom(msg):
        raise RuntimeError("bug")

    monkeypatch.setattr(s, "_on_request_state", boom)
    send(s, {"type": "request_state", "run_id": "x"})
    (err,) = frames(s)
    assert (err["type"], err["code"]) == ("error", "internal")
    send(s, {"type": "ping", "id": 1})
    assert frames(s)[0]["type"] == "pong"


@pytest.mark.parametrize("frame", [
    {"type": "ping", "id": 2**64},
    {"type": "ping", "id": 2**53},
    {"type": "command", "command_id": "c", "run_id": "r", "action": "approve", "payload": {"n": [2**64]}},
])
def test_numbers_a_client_cannot_get_back_are_refused(store, frame):
    """Integers beyond what JSON encoders write (and JavaScript holds) are refused up
    front: echoing a 2**64 ping id used to raise inside the session (the socket died)."""
    s = new_session(store)
    send(s, frame)
    (err,) = frames(s)
    assert (err["type"], err["code"]) == ("error", "invalid")
    send(s, {"type": "ping", "id": 2**53 - 1})
    assert frames(s)[0]["id"] == 2**53 - 1


def test_deeply_nested_json_is_bad_json(store):
    s = new_session(store)
    send(s, "[" * 100_000 + "]" * 100_000)
    (err,) = frames(s)
    assert (err["type"], err["code"]) == ("error", "bad_json")


def test_subscribers_catching_up_a_backlog_read_each_event_from_the_store_once(store):
    """Sessions behind the hub's window (here: a backlog from seq 0) share what they read:
    ten subscribers replaying 6,000 events read each block of the log once, not ten times,
    and each gets every event exactly once, in order."""
    run = finished_run(store)
    last = append_events(store, run.id, 6000)
    reads: list[tuple[int, int, int]] = []  # (after, limit, rows returned)

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def event_rows(self, run_id, after, limit):
            rows = self.inner.event_rows(run_id, after, limit)
            reads.append((after, limit, len(rows)))
            return rows

    cache = RowCache()
    sessions = [Session(DirectGateway(Counting(store)), server_id="t", heartbeat_interval=15.0)
                for _ in range(10)]
    clients = [Client() for _ in sessions]
    for s, c in zip(sessions, clients):
        send(s, {"type": "subscribe", "run_id": run.id, "after_seq": 0})
        c.subscribed(run.id, 0)
    got = [[] for _ in sessions]
    busy = True
    while busy:  # the sessions take turns, as the hub's connections do
        busy = False
        for i, (s, c) in enumerate(zip(sessions, clients)):
            s.notify(run.id, last)
            more = drive(s.pump(cache))
            raw = s.take()
            got[i] += event_seqs(c.feed_all([orjson.loads(f) for f in raw]))
            s.written(sum(len(f) for f in raw))
            busy = busy or more or bool(raw)
    assert all(g == list(range(1, last + 1)) for g in got)
    full_blocks = sorted(after for after, limit, n in reads if limit == n == BLOCK)
    assert full_blocks == list(range(0, last // BLOCK * BLOCK, BLOCK))  # each read once
    # all in all, not much more than the log once (the last, partial block: per session)
    assert sum(n for _, _, n in reads) < last + len(sessions) * BLOCK


def test_subscribers_reaching_a_block_together_wait_for_one_read(store):
    """The server's reads take time (a pool thread): ten sessions pumping at once, on one
    loop, that all miss the same block read it once between them, not once each, and each
    still gets every event exactly once, in order."""
    run = finished_run(store)
    last = append_events(store, run.id, 3 * BLOCK)
    reads: list[tuple[int, int, int]] = []

    class SlowGateway:  # reads off the loop, like gateway.StoreGateway
        async def call(self, fn, timeout=None):
            return await asyncio.to_thread(fn, self)

        def event_rows(self, run_id, after, limit):
            rows = store.event_rows(run_id, after, limit)
            reads.append((after, limit, len(rows)))
            return rows

        def __getattr__(self, name):
            return getattr(store, name)

    async def scenario():
        cache = RowCache()
        sessions = [Session(SlowGateway(), server_id="t", heartbeat_interval=15.0) for _ in range(10)]
        clients = [Client() for _ in sessions]
        for s, c in zip(sessions, clients):
            await s.receive(json.dumps({"type": "subscribe", "run_id": run.id, "after_seq": 0}))
            c.subscribed(run.id, 0)
            s.notify(run.id, last)
        got = [[] for _ in sessions]

        async def follow(i):
            s, c = sessions[i], clients[i]
            while True:
                more = await s.pump(cache)
                raw = s.take()
                got[i] += event_seqs(c.feed_all([orjson.loads(f) for f in raw]))
                s.written(sum(len(f) for f in raw))
                if not more and not raw:
                    return

        await asyncio.gather(*(follow(i) for i in range(len(sessions))))
        return got

    got = asyncio.run(scenario())
    assert all(g == list(range(1, last + 1)) for g in got)
    full_blocks = sorted(after for after, limit, n in reads if limit == n == BLOCK)
    assert full_blocks == list(range(0, last // BLOCK * BLOCK, BLOCK))  # each read once
