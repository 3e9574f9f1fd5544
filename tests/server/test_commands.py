"""Commands over the socket and over REST: acks, refusals, and idempotence by command_id."""

import json

from server_support import node_status, steerable_run
from support import wait_until_async


def transitions(store, run_id, new_state):
    return [e for e in store.events(run_id).dicts()
            if e["data"].get("new_state") == new_state and "old_state" in e["data"]]


async def started_steerable(store):
    run, release = steerable_run(store)
    await wait_until_async(lambda: node_status(store, run.id, "work") == "running", what="the step to start")
    return run, release


async def test_duplicate_command_same_ack_applied_once(store, ws_connect, jp_fetch):
    run, release = await started_steerable(store)
    ws = await ws_connect()
    await ws.expect("hello")
    cmd = {"type": "command", "command_id": "dup-pause", "run_id": run.id, "action": "pause"}
    (first,) = await ws.request(cmd)
    assert first["type"] == "ack" and first["ok"] is True and first["command_id"] == "dup-pause"
    assert first["state"] == "executing"  # the state the command was accepted in
    (again,) = await ws.request(cmd)
    assert again == first
    # the same command over REST: the same ack
    body = {k: v for k, v in cmd.items() if k not in ("type", "run_id")}
    r = await jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST", body=json.dumps(body))
    assert r.code == 200 and json.loads(r.body) == first
    await wait_until_async(lambda: run.state == "paused", what="the run to pause")
    # once more after it was applied: still the same ack, and no second pause
    (late,) = await ws.request(cmd)
    assert late == first
    assert store.command_status("dup-pause")["status"] == "applied"
    # the resume goes the other way round: REST first, then the socket
    body = {"command_id": "dup-resume", "action": "resume"}
    r1 = await jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST", body=json.dumps(body))
    r2 = await jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST", body=json.dumps(body))
    (ws_ack,) = await ws.request({"type": "command", "run_id": run.id, **body})
    assert json.loads(r1.body) == json.loads(r2.body) == ws_ack and ws_ack["ok"] is True
    await wait_until_async(lambda: run.state == "executing", what="the run to resume")
    release.set()
    await wait_until_async(lambda: run.state == "completed", what="the run to complete")
    assert len(transitions(store, run.id, "pausing")) == 1
    assert len(transitions(store, run.id, "paused")) == 1
    assert len([e for e in store.events(run.id).dicts() if e["event_type"] == "workflow_resumed"]) == 1


async def test_command_id_reused_for_another_command_is_refused(store, ws_connect):
    run, release = await started_steerable(store)
    ws = await ws_connect()
    await ws.expect("hello")
    (ok,) = await ws.request({"type": "command", "command_id": "c1", "run_id": run.id, "action": "pause"})
    assert ok["ok"] is True
    (clash,) = await ws.request({"type": "command", "command_id": "c1", "run_id": run.id, "action": "cancel"})
    assert clash["type"] == "ack" and clash["ok"] is False and clash["code"] == "command_id_reused"
    await wait_until_async(lambda: run.state == "paused", what="the run to pause")
    assert run.state == "paused"  # not cancelled
    (resumed,) = await ws.request({"type": "command", "command_id": "c2", "run_id": run.id,
                                   "action": "resume"})
    assert resumed["ok"] is True
    release.set()
    await wait_until_async(lambda: run.state == "completed", what="the run to complete")


async def test_refused_commands_are_acked_with_a_code(store, ws_connect, jp_fetch):
    run, release = await started_steerable(store)
    ws = await ws_connect()
    await ws.expect("hello")
    cases = [
        ({"action": "resume"}, "illegal_command", 409),             # not paused
        ({"action": "retry", "node_id": "work"}, "illegal_command", 409),  # not failed
        ({"action": "approve"}, "no_pending_approval", 409),
        ({"action": "pause", "node_id": "no-such-node"}, "unknown_node", 404),
    ]
    for i, (fields, code, status) in enumerate(cases):
        (ack,) = await ws.request({"type": "command", "command_id": f"ws-{i}", "run_id": run.id, **fields})
        assert ack["type"] == "ack" and ack["ok"] is False and ack["code"] == code, ack
        assert ack["error"]
        r = await jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST",
                           body=json.dumps({"command_id": f"rest-{i}", **fields}), raise_error=False)
        assert r.code == status and json.loads(r.body)["code"] == code
        assert store.command_status(f"ws-{i}") is None and store.command_status(f"rest-{i}") is None
    assert run.state == "executing"
    release.set()
    await wait_until_async(lambda: run.state == "completed", what="the run to complete")


async def test_commands_steer_a_run_seen_live(store, ws_connect):
    """Pause, resume and cancel from the socket, watching the effect on the same socket."""
    run, release = await started_steerable(store)
    ws = await ws_connect()
    await ws.expect("hello")
    (snap,) = await ws.request({"type": "subscribe", "run_id": run.id})
    last = snap["seq"]

    def saw(state):
        def pred(m):
            return m["type"] == "events" and any(e["data"].get("new_state") == state for e in m["events"])
        return pred

    for action, state in (("pause", "paused"), ("resume", "executing"), ("cancel", "cancelled")):
        await ws.send({"type": "command", "command_id": f"live-{action}", "run_id": run.id, "action": action})
        # the ack and the events come in either order (the hub may send the effect first)
        frames = await ws.recv_until(saw(state))
        if not any(f["type"] == "ack" for f in frames):
            frames += await ws.recv_until(lambda m: m["type"] == "ack")
        acks = [f for f in frames if f["type"] == "ack"]
        assert [a["command_id"] for a in acks] == [f"live-{action}"] and acks[0]["ok"] is True
        for f in frames:
            for e in f.get("events", []):
                assert e["seq"] == last + 1
                last = e["seq"]
    assert run.state == "cancelled"


async def test_a_store_failure_refuses_the_command_and_keeps_the_socket(store, ws_connect, cmbagent_app,
                                                                          monkeypatch):
    run, release = await started_steerable(store)
    ws = await ws_connect()
    await ws.expect("hello")

    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cmbagent_app.gateway.store, "submit_command", broken)
    (ack,) = await ws.request({"type": "command", "command_id": "c-broken", "run_id": run.id,
                               "action": "pause"})
    assert (ack["type"], ack["ok"], ack["code"]) == ("ack", False, "internal")
    assert "disk on fire" not in ack["error"]  # internals stay in the server's log
    monkeypatch.undo()
    (ack,) = await ws.request({"type": "command", "command_id": "c-ok", "run_id": run.id, "action": "cancel"})
    assert ack["ok"] is True
    await wait_until_async(lambda: run.state == "cancelled", what="the run to be cancelled")
