import json

from engine import Workflow


def make_wf():
    wf = Workflow("server-basic")

    @wf.step()
    def a(ctx):
        for i in range(10):
            ctx.progress((i + 1) / 10)
        return 1

    @wf.step(deps=["a"])
    def b(a):
        return a + 1

    return wf


async def test_subscribe_snapshot_then_live(store, ws_connect):
    ws = await ws_connect()
    hello = await ws.recv()
    assert hello["type"] == "hello" and hello["protocol"] == 1
    run = make_wf().start(store=store)
    await ws.send({"type": "subscribe", "run_id": run.id})
    snap = await ws.recv()
    assert snap["type"] == "snapshot" and snap["run_id"] == run.id
    last = snap["seq"]
    # The run may have finished before the subscription: then the snapshot says so.
    while snap["run"]["state"] != "completed":
        msg = await ws.recv()
        assert msg["type"] == "events"
        for ev in msg["events"]:
            assert ev["seq"] == last + 1
            last = ev["seq"]
        if msg["events"] and msg["events"][-1]["event_type"] == "workflow_completed":
            break
    assert last == len(run.events())


async def test_rest_runs_and_schema(store, jp_fetch):
    run = make_wf().run(store=store, timeout=30)
    r = await jp_fetch("cmbagent", "api", "runs")
    runs = json.loads(r.body)["runs"]
    assert [x["id"] for x in runs] == [run.id]
    r = await jp_fetch("cmbagent", "api", "runs", run.id, "events", params={"after_seq": 3, "limit": 2})
    body = json.loads(r.body)
    assert [e["seq"] for e in body["events"]] == [4, 5]
    r = await jp_fetch("cmbagent", "api", "schema")
    assert "ServerMessage" in json.loads(r.body)["$defs"]
