"""Durable work over the wire: re-run from a step (WS and REST, applied once from two tabs),
deleting runs (REST DELETE, refused while executing; run-list subscribers and the run's
subscribers hear run_deleted)."""

import json

from tornado.httpclient import HTTPClientError

from engine import Workflow
from server_support import node_status, steerable_run
from support import wait_until_async


def finished_run(store):
    wf = Workflow("to re-run")
    wf.step("first")(lambda: 1)
    wf.step("second", deps=["first"])(lambda first: first + 1)
    return wf.run(store=store, timeout=30)


def step_starts(store, run_id, node_id):
    return [e for e in store.events(run_id).dicts()
            if e["event_type"] == "step_started" and e["data"]["node_id"] == node_id]


async def test_rerun_from_two_tabs_and_over_rest_is_applied_once(store, ws_connect, jp_fetch):
    run = finished_run(store)
    tab1, tab2 = await ws_connect(), await ws_connect()
    await tab1.expect("hello")
    await tab2.expect("hello")
    cmd = {"type": "command", "command_id": "rerun-first", "run_id": run.id, "action": "rerun",
           "node_id": "first"}
    (a,) = await tab1.request(cmd)
    (b,) = await tab2.request(cmd)
    assert a == b and a["ok"] is True and a["state"] == "completed"
    body = {"command_id": "rerun-first", "action": "rerun", "node_id": "first"}
    r = await jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST", body=json.dumps(body))
    assert json.loads(r.body) == a
    await wait_until_async(lambda: len(step_starts(store, run.id, "second")) == 2 and run.state == "completed",
                           what="the re-run to finish")
    assert len(step_starts(store, run.id, "first")) == 2  # once at the start, once re-run
    # A running node cannot be re-run; a node id is required.
    (no_node,) = await tab1.request({**cmd, "command_id": "rerun-none", "node_id": None})
    assert no_node["ok"] is False and "needs a node_id" in no_node["error"]


async def test_delete_is_refused_while_executing_then_heard_by_every_subscriber(store, ws_connect, jp_fetch):
    run, release = steerable_run(store)
    await wait_until_async(lambda: node_status(store, run.id, "work") == "running", what="the step to start")
    lister, viewer = await ws_connect(), await ws_connect()
    await lister.expect("hello")
    await viewer.expect("hello")
    frames = await lister.request({"type": "subscribe_runs"})
    assert run.id in {r["id"] for r in frames[0]["runs"]}
    await viewer.request({"type": "subscribe", "run_id": run.id})
    try:
        await jp_fetch("cmbagent", "api", "runs", run.id, method="DELETE")
        raise AssertionError("a DELETE of an executing run was accepted")
    except HTTPClientError as exc:
        assert exc.code == 409 and "cancel it first" in json.loads(exc.response.body)["message"]
    release.set()
    await wait_until_async(lambda: run.state == "completed", what="the run to complete")
    r = await jp_fetch("cmbagent", "api", "runs", run.id, method="DELETE")
    assert json.loads(r.body) == {"deleted": run.id}
    got = await lister.recv_until(lambda m: m["type"] == "run_deleted")
    assert got[-1] == {"type": "run_deleted", "run_id": run.id}
    got = await viewer.recv_until(lambda m: m["type"] == "run_deleted")
    assert got[-1]["run_id"] == run.id
    try:
        await jp_fetch("cmbagent", "api", "runs", run.id)
        raise AssertionError("a deleted run is still served")
    except HTTPClientError as exc:
        assert exc.code == 404
