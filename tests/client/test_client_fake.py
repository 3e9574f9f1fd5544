"""The socket layer against a scripted server: heartbeat, reconnect, resubscribe, command retry."""

import asyncio
import random
import socket

import pytest

from cmbagent_jupyter.client import Client, Marker, RunNotFound

RUN = "r1"


def snapshot_frame(seq, state="executing"):
    run = {"id": RUN, "name": "fake", "description": "", "owner": "", "state": state, "reason": None,
           "created_at": "2024-01-01T00:00:00+00:00", "started_at": None, "finished_at": None,
           "updated_at": "2024-01-01T00:00:00+00:00", "cost_usd": 0.0, "input_tokens": 0,
           "output_tokens": 0, "counts": {"pending": 1, "running": 0}, "total": 1, "done": 0,
           "pending_approvals": [], "last_error": None}
    node = {"id": "n", "label": "n", "description": "", "deps": [], "retries": 0, "position": 0,
            "status": "pending", "attempt": 0, "progress": None, "progress_message": None,
            "started_at": None, "finished_at": None, "error": None, "result_preview": None,
            "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0, "last_message": None,
            "files": [], "metrics": {}, "approval": None}
    return {"type": "snapshot", "run_id": RUN, "seq": seq, "run": run, "nodes": [node], "edges": [],
            "layout": {"generations": [["n"]]}}


def metric(seq, value):
    return {"run_id": RUN, "seq": seq, "id": f"e{seq}", "event_type": "metric_update",
            "timestamp": f"2024-01-01T00:00:{seq:02d}+00:00",
            "data": {"node_id": "n", "name": "m", "value": float(value)}}


def events_frame(seqs):
    return {"type": "events", "run_id": RUN, "events": [metric(s, s) for s in seqs]}


def make_client(fake, **kw):
    kw.setdefault("first_backoff", 0.02)
    kw.setdefault("rng", random.Random(7))
    return Client(fake.url, "tok", **kw)


async def test_resubscribe_from_last_applied_after_drop(fake_server):
    fake = fake_server

    def script(conn, frame):
        if frame["type"] == "subscribe" and "after_seq" not in frame:
            conn.send(snapshot_frame(2))
            conn.send(events_frame([3, 4]))
        elif frame["type"] == "subscribe":
            # replay from the cursor, with an overlap the client must drop
            conn.send(events_frame(range(frame["after_seq"] - 1, 8)))

    fake.on_frame = script
    async with make_client(fake) as client:
        stream = client.events(RUN, markers=True)
        first = await stream.next(5)
        assert isinstance(first, Marker) and first.kind == "snapshot" and first.seq == 2
        assert [(await stream.next(5))["seq"] for _ in range(2)] == [3, 4]
        assert client.connection_state == "live" and client.stats.reconnects == 0
        fake.conns[0].close()  # the server drops the connection
        await client.wait_for(lambda: client.last_seq(RUN) == 7, 5)
        assert [(await stream.next(5))["seq"] for _ in range(3)] == [5, 6, 7]
        assert stream.pending() == 0
        subs = fake.frames("subscribe")
        assert subs == [{"type": "subscribe", "run_id": RUN},
                        {"type": "subscribe", "run_id": RUN, "after_seq": 4}]
        assert client.stats.reconnects == 1 and client.stats.duplicates_dropped == 2  # 3 and 4
        assert client.state(RUN).nodes["n"]["metrics"] == {"m": 7.0}
        assert client.state(RUN).seq == 7


async def test_gap_over_the_wire_requests_state(fake_server):
    fake = fake_server

    def script(conn, frame):
        if frame["type"] == "subscribe":
            conn.send(snapshot_frame(1))
            conn.send(events_frame([2, 4, 5]))  # 3 is missing
        elif frame["type"] == "request_state":
            conn.send(snapshot_frame(5))
            conn.send(events_frame([5, 6]))

    fake.on_frame = script
    async with make_client(fake) as client:
        stream = client.events(RUN, markers=True)
        await client.wait_for(lambda: client.last_seq(RUN) == 6, 5)
        items = [await stream.next(5) for _ in range(4)]
        assert [(i.kind, i.seq) if isinstance(i, Marker) else i["seq"] for i in items] == [
            ("snapshot", 1), 2, ("snapshot", 5), 6]
        assert len(fake.frames("request_state")) == 1
        assert client.stats.gaps == 1 and client.stats.duplicates_dropped == 1


async def test_reset_then_snapshot(fake_server):
    fake = fake_server

    def script(conn, frame):
        if frame["type"] == "subscribe":
            conn.send({"type": "reset", "run_id": RUN, "reason": "ahead"})
            conn.send(events_frame([1]))  # ignored: a snapshot follows a reset
            conn.send(snapshot_frame(3))

    fake.on_frame = script
    async with make_client(fake) as client:
        stream = client.events(RUN, markers=True)
        client.subscribe(RUN)
        await client.wait_synced(RUN, 5)
        reset, snap = await stream.next(5), await stream.next(5)
        assert reset.kind == "reset" and reset.reason == "ahead"
        assert snap.kind == "snapshot" and snap.seq == 3 and stream.pending() == 0
        assert client.stats.resets == 1 and client.state(RUN).seq == 3


async def test_missing_pong_drops_the_connection(fake_server):
    fake = fake_server
    fake.pong = False
    fake.heartbeat_interval = 0.05
    async with make_client(fake) as client:
        errors = []
        client.add_listener(lambda c: errors.append(c.last_error))
        await client.wait_live(5)
        await client.wait_for(lambda: client.stats.reconnects >= 1, 5)
        assert "no pong within 0.1 s" in errors
        assert fake.frames("ping", conn=0)  # it did ping
        assert fake.conns[0].ws_connection is None  # and closed the silent connection
        fake.pong = True
        pings = len(fake.frames("ping"))
        await client.wait_for(lambda: len(fake.frames("ping")) >= pings + 4, 5)
        reconnects = client.stats.reconnects
        # with pongs coming back, more pings go out on the same connection
        await client.wait_for(lambda: len(fake.frames("ping")) >= pings + 8, 5)
        assert client.stats.reconnects == reconnects


async def test_command_resent_with_same_id_until_acked(fake_server):
    fake = fake_server

    def script(conn, frame):
        if frame["type"] == "command":
            if conn.index == 0:
                conn.close()  # dropped before the ack
            else:
                conn.send({"type": "ack", "command_id": frame["command_id"], "ok": True,
                           "state": "paused"})

    fake.on_frame = script
    async with make_client(fake) as client:
        await client.wait_live(5)
        ack = await client.command(RUN, "pause", command_id="c-1", timeout=5)
        assert ack == {"command_id": "c-1", "ok": True, "state": "paused"}
        cmds = fake.frames("command")
        assert len(cmds) >= 2 and {c["command_id"] for c in cmds} == {"c-1"}
        assert cmds[0] == {"type": "command", "command_id": "c-1", "run_id": RUN, "action": "pause"}


async def test_command_error_frame_is_a_refusal_and_timeout(fake_server):
    fake = fake_server

    def script(conn, frame):
        if frame["type"] == "command" and frame["action"] == "retry":
            conn.send({"type": "error", "code": "unknown_run", "message": "unknown run 'x'",
                       "ref": frame["command_id"]})

    fake.on_frame = script
    async with make_client(fake) as client:
        ack = await client.command("x", "retry", node_id="n", command_id="c-2", timeout=5)
        assert ack == {"command_id": "c-2", "ok": False, "error": "unknown run 'x'", "code": "unknown_run"}
        with pytest.raises(asyncio.TimeoutError):
            await client.command("x", "pause", timeout=0.1)  # the fake never answers it
        assert client._commands == {}


async def test_unknown_run_ends_the_stream(fake_server):
    fake = fake_server

    def script(conn, frame):
        if frame["type"] == "subscribe":
            conn.send({"type": "error", "code": "unknown_run", "message": "unknown run 'zz'",
                       "ref": frame["run_id"]})

    fake.on_frame = script
    async with make_client(fake) as client:
        stream = client.events("zz")
        with pytest.raises(RunNotFound):
            await stream.next(5)
        with pytest.raises(RunNotFound):
            await client.wait_synced("zz", 5)


async def test_runs_list(fake_server):
    fake = fake_server
    doc = snapshot_frame(1)["run"]

    def script(conn, frame):
        if frame["type"] == "subscribe_runs":
            conn.send({"type": "runs", "runs": [doc]})
            conn.send({"type": "run_changed", "run": {**doc, "state": "completed"}})
            conn.send({"type": "run_changed", "run": {**doc, "id": "r2"}})

    fake.on_frame = script
    async with make_client(fake) as client:
        client.subscribe_runs()
        await client.wait_for(lambda: len(client.runs()) == 2, 5)
        runs = client.runs()
        assert list(runs) == ["r2", RUN]  # a new run goes first (newest first)
        assert runs[RUN]["state"] == "completed"
        fake.conns[0].close()
        await client.wait_for(lambda: len(fake.frames("subscribe_runs")) == 2, 5)


async def test_backoff_while_server_is_down():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}/", first_backoff=0.5, max_backoff=0.5,
                    rng=random.Random(3))
    seen = []
    client.add_listener(lambda c: seen.append(c.connection_state))
    assert client.connection_state == "offline"
    client.start()
    try:
        await client.wait_for(lambda: client.connection_state == "reconnecting", 5)
        assert 0 <= client.next_retry_in <= 0.5
        assert client.last_error and "HTTP" not in client.last_error
        assert client.describe_connection().startswith("reconnecting")
        await client.wait_for(lambda: client.backoff.attempt >= 3, 5)
        assert seen[:2] == ["connecting", "reconnecting"]
        client.retry_now()
    finally:
        await client.close()
    assert client.connection_state == "offline" and client.next_retry_in is None


async def test_the_store_status_is_told_and_forgotten_with_the_connection(fake_server):
    fake = fake_server
    async with make_client(fake, validate=True) as client:
        await client.wait_live(5)
        assert client.store_available and client.store_unavailable_since is None
        fake.conns[0].send({"type": "store_status", "available": False,
                            "since": "2030-01-01T14:02:11+00:00"})
        await client.wait_for(lambda: not client.store_available, 5)
        assert client.store_unavailable_since == "2030-01-01T14:02:11+00:00"
        assert client.describe_connection().startswith("live, run store not answering since ")
        assert client.connection_state == "live"  # the socket itself is fine
        fake.conns[0].close()  # a new connection: its server says so again if it must
        await client.wait_for(lambda: len(fake.conns) == 2 and client.connection_state == "live", 5)
        assert client.store_available and client.describe_connection() == "live"
        fake.conns[1].send({"type": "store_status", "available": False, "since": "2030-01-01T14:02:12+00:00"})
        fake.conns[1].send({"type": "store_status", "available": True, "since": "2030-01-01T14:02:40+00:00"})
        await client.wait_for(lambda: client.stats.frames >= 5, 5)  # hello, status; hello, status, status
        assert client.store_available and client.store_unavailable_since is None
        assert client.invalid_frames == []
