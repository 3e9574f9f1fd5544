"""The ``answer`` command over the socket and REST: one answer applied, once, whoever sends it."""

import json

from engine import Workflow
from support import wait_until_async


async def test_answer_over_the_socket_and_rest(store, ws_connect, jp_fetch):
    wf = Workflow("asks-over-the-wire")
    got = {}

    @wf.step()
    def plan(ctx):
        got["answer"] = ctx.ask("Which H0 prior?", choices=["Planck", "SH0ES"])

    run = wf.start(store=store)
    await wait_until_async(lambda: run.state == "waiting_approval", what="the question")
    ws = await ws_connect()
    await ws.expect("hello")
    cmd = {"type": "command", "command_id": "ans-1", "run_id": run.id, "action": "answer"}
    (bad,) = await ws.request({**cmd, "command_id": "ans-0", "payload": {"text": "Riess"}})
    assert bad["ok"] is False and "must be one of 'Planck', 'SH0ES'" in bad["error"]
    (first,) = await ws.request({**cmd, "payload": {"text": "Planck"}})
    assert first["ok"] is True and first["state"] == "waiting_approval"
    # the same command over REST: the same ack, applied once
    body = {"command_id": "ans-1", "action": "answer", "payload": {"text": "Planck"}}
    r = await jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST", body=json.dumps(body))
    assert json.loads(r.body) == first
    await wait_until_async(lambda: run.state == "completed", what="the run to complete")
    assert got == {"answer": "Planck"}
    # a second answer, from anywhere, finds nothing to answer
    r = await jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST",
                       body=json.dumps({"command_id": "ans-2", "action": "answer", "payload": {"text": "SH0ES"}}),
                       raise_error=False)
    refused = json.loads(r.body)
    assert refused["ok"] is False and refused["code"] in ("no_pending_question", "illegal_command")
    answered = [e for e in store.events(run.id).dicts() if e["event_type"] == "question_answered"]
    assert [e["data"]["answer"] for e in answered] == ["Planck"]
