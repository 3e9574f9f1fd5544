"""Wire protocol v1 over a real socket: hello, subscriptions and cursors, resets, the run
list, unknown runs. Every frame is validated against the server's schema by the WS
fixture (conftest.WS)."""

import json

import engine
import pytest
from server_support import FrameValidator, finished_run, gated_run, node_status, steerable_run
from support import wait_until_async


def seqs(frames, run_id=None):
    return [e["seq"] for f in frames if f["type"] == "events" and (run_id is None or f["run_id"] == run_id)
            for e in f["events"]]


def is_completed_event(msg):
    return msg["type"] == "events" and any(e["event_type"] == "workflow_completed" for e in msg["events"])


async def test_hello_first_on_every_connection(ws_connect, jp_serverapp):
    app = jp_serverapp.web_app.settings["cmbagent_jupyter"]
    ids = set()
    for _ in range(2):
        ws = await ws_connect()
        hello = await ws.expect("hello")
        assert {k: hello[k] for k in ("type", "protocol", "server_id", "heartbeat_interval")} == {
            "type": "hello", "protocol": 1, "server_id": app.server_id,
            "heartbeat_interval": app.heartbeat_interval}
        ids.add(hello["server_id"])
    assert len(ids) == 1


async def test_ping_pong(ws_connect):
    ws = await ws_connect()
    await ws.expect("hello")
    for pid in ("a", 12, None):
        await ws.send({"type": "ping", "id": pid})
        pong = await ws.expect("pong")
        assert pong["id"] == pid


async def test_subscribe_without_cursor_snapshot_then_live_until_completed(store, ws_connect):
    run, gate = gated_run(store, progress=30)
    await wait_until_async(lambda: node_status(store, run.id, "a") == "running", what="step a to start")
    ws = await ws_connect()
    await ws.expect("hello")
    await ws.send({"type": "subscribe", "run_id": run.id})
    snap = await ws.expect("snapshot")
    assert snap["run_id"] == run.id and snap["run"]["state"] == "executing"
    assert {n["id"]: n["status"] for n in snap["nodes"]} == {"a": "running", "b": "pending"}
    gate.set()
    frames = await ws.recv_until(is_completed_event)
    assert all(f["type"] == "events" and f["run_id"] == run.id for f in frames)
    got = seqs(frames)
    last = store.bounds(run.id)[1]
    assert got == list(range(snap["seq"] + 1, last + 1)), "not exactly the events after the snapshot"
    assert [e for f in frames for e in f["events"]] == run.events(after_seq=snap["seq"]).dicts()


async def test_subscribe_with_cursor_gets_exactly_the_events_after_it(store, ws_connect):
    run = finished_run(store, progress=20)
    last = store.bounds(run.id)[1]
    ws = await ws_connect()
    await ws.expect("hello")
    for after in (0, 1, 7, last - 1):
        frames = await ws.request({"type": "subscribe", "run_id": run.id, "after_seq": after})
        assert [f["type"] for f in frames] == ["events"]
        assert seqs(frames) == list(range(after + 1, last + 1))
        assert frames[0]["events"] == run.events(after_seq=after).dicts()
    frames = await ws.request({"type": "subscribe", "run_id": run.id, "after_seq": last})
    assert frames == [{"type": "events", "run_id": run.id, "events": []}]


async def test_subscribe_with_cursor_then_live(store, ws_connect):
    """A cursor in the middle of a live run: the backlog, then live, nothing twice."""
    run, gate = gated_run(store, progress=50)
    await wait_until_async(lambda: node_status(store, run.id, "a") == "running", what="step a to start")
    ws = await ws_connect()
    await ws.expect("hello")
    after = 2
    await ws.send({"type": "subscribe", "run_id": run.id, "after_seq": after})
    gate.set()
    frames = await ws.recv_until(is_completed_event)
    assert seqs(frames) == list(range(after + 1, store.bounds(run.id)[1] + 1))


async def test_two_sockets_get_the_same_stream(store, ws_connect):
    run, gate = gated_run(store, progress=40)
    await wait_until_async(lambda: node_status(store, run.id, "a") == "running", what="step a to start")
    sockets = [await ws_connect() for _ in range(2)]
    for ws in sockets:
        await ws.expect("hello")
        await ws.send({"type": "subscribe", "run_id": run.id, "after_seq": 0})
    gate.set()
    streams = [seqs(await ws.recv_until(is_completed_event)) for ws in sockets]
    last = store.bounds(run.id)[1]
    assert streams[0] == streams[1] == list(range(1, last + 1))


@pytest.mark.parametrize("cursor,reason", [
    ("ahead", "ahead"), ("far-ahead", "ahead"), ("abc", "malformed"), (-1, "malformed"),
    (1.5, "malformed"), (True, "malformed"), ("7", "malformed"),
])
async def test_unusable_cursor_gets_reset_then_snapshot(store, ws_connect, cursor, reason):
    run = finished_run(store)
    last = store.bounds(run.id)[1]
    after = {"ahead": last + 1, "far-ahead": 10**30}.get(cursor, cursor)
    ws = await ws_connect()
    await ws.expect("hello")
    frames = await ws.request({"type": "subscribe", "run_id": run.id, "after_seq": after})
    assert frames[0] == {"type": "reset", "run_id": run.id, "reason": reason}
    assert [f["type"] for f in frames] == ["reset", "snapshot"]
    assert frames[1]["seq"] == last and frames[1] == {"type": "snapshot", **store.snapshot(run.id)}


async def test_trimmed_cursor_gets_reset_then_snapshot_then_live(store, db_url, ws_connect):
    run, release = steerable_run(store)
    await wait_until_async(lambda: node_status(store, run.id, "work") == "running", what="the step to start")
    for _ in range(3):  # some history to trim
        run.pause()
        run.resume()
    trimmer = engine.open_store(db_url, max_events_per_run=3)
    assert trimmer.trim() > 0
    first, last = store.bounds(run.id)
    assert first > 2
    ws = await ws_connect()
    await ws.expect("hello")
    frames = await ws.request({"type": "subscribe", "run_id": run.id, "after_seq": first - 2})
    assert [f["type"] for f in frames] == ["reset", "snapshot"]
    assert frames[0] == {"type": "reset", "run_id": run.id, "reason": "trimmed"}
    snap = frames[1]
    assert snap["seq"] >= last
    # live from the snapshot on
    release.set()
    frames = await ws.recv_until(is_completed_event)
    assert seqs(frames) == list(range(snap["seq"] + 1, store.bounds(run.id)[1] + 1))
    # the oldest cursor still stored is honoured
    first, last = store.bounds(run.id)
    frames = await ws.request({"type": "subscribe", "run_id": run.id, "after_seq": first - 1})
    assert seqs(frames) == list(range(first, last + 1))


async def test_unsubscribe_stops_the_stream(store, ws_connect, cmbagent_app):
    run, gate = gated_run(store, progress=5)
    await wait_until_async(lambda: node_status(store, run.id, "a") == "running", what="step a to start")
    ws = await ws_connect()
    await ws.expect("hello")
    frames = await ws.request({"type": "subscribe", "run_id": run.id})
    assert [f["type"] for f in frames] == ["snapshot"]
    assert await ws.request({"type": "unsubscribe", "run_id": run.id}) == [
        {"type": "unsubscribed", "run_id": run.id}]
    gate.set()
    await wait_until_async(lambda: run.state == "completed", what="the run to complete")
    hub = cmbagent_app.hub
    await wait_until_async(lambda: hub.cursor >= store.change_cursor(), what="the hub to see every commit")
    # the hub sends what it wakes a socket for before its next tick; a round trip later,
    # nothing of the run came
    await ws.send({"type": "ping", "id": "after"})
    frames = await ws.recv_until(lambda m: m["type"] == "pong")
    assert [f["type"] for f in frames] == ["pong"]
    assert not [f for f in ws.received if f.get("run_id") == run.id and f["type"] == "events"]


async def test_request_state_sends_the_current_snapshot(store, ws_connect):
    run = finished_run(store)
    ws = await ws_connect()
    await ws.expect("hello")
    frames = await ws.request({"type": "request_state", "run_id": run.id})
    assert frames == [{"type": "snapshot", **store.snapshot(run.id)}]


@pytest.mark.parametrize("frame", [
    {"type": "subscribe", "run_id": "no-such-run"},
    {"type": "subscribe", "run_id": "no-such-run", "after_seq": 0},
    {"type": "request_state", "run_id": "no-such-run"},
    {"type": "command", "command_id": "cmd-unknown", "run_id": "no-such-run", "action": "pause"},
])
async def test_unknown_run(store, ws_connect, frame):
    finished_run(store)
    ws = await ws_connect()
    await ws.expect("hello")
    (reply,) = await ws.request(frame)
    assert reply["type"] in ("error", "ack")
    assert reply["code"] == "unknown_run"
    assert reply.get("ref") == frame.get("command_id", frame["run_id"])
    if reply["type"] == "ack":
        assert reply["ok"] is False


async def test_run_list_then_changes_as_a_run_progresses(store, ws_connect):
    older = finished_run(store, name="older")
    newer = finished_run(store, name="newer")
    ws = await ws_connect()
    await ws.expect("hello")
    (runs,) = await ws.request({"type": "subscribe_runs"})
    assert runs["type"] == "runs"
    assert [r["id"] for r in runs["runs"]] == [newer.id, older.id]  # newest first
    assert runs["runs"] == store.runs()
    created = [r["created_at"] for r in runs["runs"]]
    assert created == sorted(created, reverse=True)

    run, gate = gated_run(store, progress=10, name="fresh")
    # each change is reported with the run's document as of then (one per hub tick)
    frames = await ws.recv_until(lambda m: m["type"] == "run_changed" and m["run"]["state"] == "executing")
    gate.set()
    frames += await ws.recv_until(lambda m: m["type"] == "run_changed" and m["run"]["state"] == "completed")
    changed = [f["run"] for f in frames if f["type"] == "run_changed"]
    assert [f["type"] for f in frames] == ["run_changed"] * len(frames)
    assert {r["id"] for r in changed} == {run.id}  # finished runs did not change
    states = [r["state"] for r in changed]
    assert states[-1] == "completed" and "executing" in states
    assert [r["updated_at"] for r in changed] == sorted(r["updated_at"] for r in changed)
    assert changed[-1] == store.run_doc(run.id)
    # and it stops on request
    assert await ws.request({"type": "unsubscribe_runs"}) == [{"type": "unsubscribed"}]


async def test_bad_frames_get_errors_and_the_socket_stays_open(ws_connect):
    ws = await ws_connect()
    await ws.expect("hello")
    for raw, code in [("nope", "bad_json"), (b"\x00\xff", "bad_json"), ("[]", "bad_frame"),
                      ('{"type": "launch"}', "unknown_type"),
                      ('{"type": "subscribe", "run_id": 1}', "invalid"),
                      (json.dumps({"type": "command", "command_id": "c", "run_id": "r",
                                   "action": "explode"}), "invalid")]:
        (err,) = await ws.request(raw)
        assert err["type"] == "error" and err["code"] == code, (raw, err)


async def test_the_fixtures_schema_check_is_the_whole_server_message_check(store, ws_connect, jp_fetch):
    """The fixtures' fast schema check (server_support.FrameValidator: discriminated
    unions checked against the one alternative named) agrees with plain Draft 2020-12
    validation of ``ServerMessage`` on real frames and on broken ones."""
    run = finished_run(store, progress=1)
    ws = await ws_connect()
    await ws.expect("hello")
    for frame in ({"type": "subscribe", "run_id": run.id, "after_seq": 3}, {"type": "subscribe_runs"},
                  {"type": "request_state", "run_id": run.id}, {"type": "nope"},
                  {"type": "subscribe", "run_id": run.id, "after_seq": "x"},
                  {"type": "command", "command_id": "c", "run_id": run.id, "action": "pause"},
                  {"type": "unsubscribe", "run_id": run.id}):
        await ws.request(frame)
    schema = json.loads((await jp_fetch("cmbagent", "api", "schema")).body)
    fast = FrameValidator(schema)
    samples = list(ws.received)
    assert {f["type"] for f in samples} >= {"hello", "events", "runs", "snapshot", "error", "ack", "reset",
                                            "unsubscribed", "pong"}
    broken = []
    for f in samples:
        broken += [{**f, "extra": 1}, {k: v for k, v in f.items() if k != "type"}, {**f, "type": "hello"},
                   {**f, "type": 5}]
        if f["type"] == "events" and f["events"]:  # the nested union of event types, too
            ev = f["events"][0]
            broken += [{**f, "events": [{**ev, "event_type": t}]} for t in ("step_started", "nope", 3)]
            broken += [{**f, "events": [{k: v for k, v in ev.items() if k != "seq"}]},
                       {**f, "events": [{**ev, "data": {}}]}]
        for key in f:
            if key != "type":
                broken.append({k: v for k, v in f.items() if k != key} if len(broken) % 2
                              else {**f, key: {"junk": [1]}})
    for f in samples + broken:
        assert fast.whole.is_valid(f) == (not list(fast.iter_errors(f))), f
    assert all(fast.whole.is_valid(f) for f in samples)
