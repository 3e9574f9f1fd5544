"""Pause, resume, cancel and approvals within one process, and commands that are refused."""

from __future__ import annotations

import threading
import time

import pytest

from engine import CommandRejected, EngineError, Run, UnknownNode, UnknownRun, Workflow
from engine_support import (
    check_log,
    node_path,
    node_status,
    of_type,
    statuses,
    wait_node,
    wait_state,
    wait_until,
    workflow_path,
)


class Gate:
    """Lets a test hold a step until it says go, and see which steps' code started when."""

    def __init__(self):
        self.go = threading.Event()
        self.entered: dict[str, float] = {}

    def enter(self, name):
        self.entered[name] = time.monotonic()


def looping_workflow(gate: Gate, name="looping") -> Workflow:
    """``long`` loops on ctx.checkpoint() until the gate opens; ``after`` depends on it."""
    wf = Workflow(name)

    @wf.step()
    def long(ctx):
        gate.enter("long")
        while not gate.go.is_set():
            ctx.checkpoint()
            time.sleep(0.002)
        return "long done"

    @wf.step(deps=["long"])
    def after(long):
        gate.enter("after")
        return long + ", after done"

    return wf


def test_cancel_stops_at_a_checkpoint_and_cancels_what_has_not_started(store):
    gate = Gate()
    wf = looping_workflow(gate, "cancel me")

    @wf.step()
    def quick():
        gate.enter("quick")
        return 1

    @wf.step(deps=["quick", "after"])
    def last(quick, after):
        gate.enter("last")

    run = wf.start(store=store)
    wait_node(run, "long", "running")
    wait_node(run, "quick", "completed")
    t_cancel = time.monotonic()
    ack = run.cancel()
    assert ack["ok"] and ack["state"] in ("cancelling", "cancelled")
    assert run.wait(10) == "cancelled"

    assert statuses(run) == {"long": "cancelled", "after": "cancelled", "quick": "completed",
                             "last": "cancelled"}
    assert set(gate.entered) == {"long", "quick"}  # no step's code began after the cancel
    assert all(t < t_cancel for t in gate.entered.values())
    events = check_log(run)
    assert workflow_path(events) == ["draft", "planning", "executing", "cancelling", "cancelled"]
    cancelling = next(e for e in events if e["data"].get("new_state") == "cancelling")
    assert cancelling["event_type"] == "workflow_state_changed"
    assert cancelling["data"]["command_id"] == ack["command_id"]
    assert not [e for e in of_type(events, "step_started") if e["seq"] > cancelling["seq"]]
    assert node_path(events, "long") == ["pending", "running", "cancelled"]
    assert node_path(events, "after") == ["pending", "cancelled"]
    assert not of_type(events, "step_failed")  # a cancelled step is not a failure
    assert events[-1]["event_type"] == "workflow_cancelled"
    snap = run.snapshot()
    assert snap["run"]["counts"]["cancelled"] == 3 and snap["run"]["finished_at"]
    with pytest.raises(CommandRejected, match="cannot cancel a run that is cancelled"):
        run.cancel()


def test_a_node_waiting_for_a_worker_does_not_start_after_cancel(store):
    gate = Gate()
    wf = looping_workflow(gate)

    @wf.step()
    def second():
        gate.enter("second")

    run = wf.start(store=store, max_workers=1)  # `second` must wait for `long`'s worker
    wait_node(run, "long", "running")
    assert node_status(run, "second") == "pending"  # "running" would be a lie: nothing runs it
    run.cancel()
    assert run.wait(10) == "cancelled"
    assert statuses(run) == {"long": "cancelled", "after": "cancelled", "second": "cancelled"}
    assert "second" not in gate.entered
    check_log(run)


def test_pause_is_cooperative_and_no_new_node_starts(store):
    gate = Gate()
    wf = looping_workflow(gate, "pause me")
    quick_go = threading.Event()

    @wf.step()
    def busy():
        quick_go.wait(10)  # busy without checkpoints: the pause must wait for it
        return 2

    @wf.step(deps=["busy"])
    def after_busy(busy):
        gate.enter("after_busy")
        return busy + 1

    run = wf.start(store=store)
    wait_node(run, "long", "running")
    wait_node(run, "busy", "running")
    ack = run.pause()
    assert ack["ok"] and ack["state"] == "pausing"
    wait_node(run, "long", "paused")  # waiting at its checkpoint
    assert run.state == "pausing"  # `busy` is still running
    quick_go.set()
    assert wait_state(run, "paused") == "paused"
    assert statuses(run) == {"long": "paused", "after": "pending", "busy": "completed",
                             "after_busy": "pending"}
    assert "after_busy" not in gate.entered  # its dependency finished, but the run is paused
    with pytest.raises(CommandRejected, match="cannot pause a run that is paused"):
        run.pause()

    ack = run.resume()
    assert ack["ok"] and ack["state"] == "executing"
    wait_node(run, "after_busy", "completed")
    wait_node(run, "long", "running")
    gate.go.set()
    assert run.wait(10) == "completed"
    assert run.result("after") == "long done, after done"
    events = check_log(run)
    assert workflow_path(events) == ["draft", "planning", "executing", "pausing", "paused",
                                     "executing", "completed"]
    assert [e["event_type"] for e in events if "old_state" in e["data"]][2:] == [
        "workflow_state_changed", "workflow_paused", "workflow_resumed", "workflow_completed"]
    assert node_path(events, "long") == ["pending", "running", "paused", "running", "completed"]
    resumed = of_type(events, "workflow_resumed")[0]["seq"]
    started = next(e["seq"] for e in of_type(events, "step_started") if e["data"]["node_id"] == "after_busy")
    assert started > resumed


def test_resume_while_pausing_goes_back_to_executing(store):
    wf = Workflow("pausing then resumed")
    hold = threading.Event()

    @wf.step()
    def busy():
        hold.wait(10)

    run = wf.start(store=store)
    wait_node(run, "busy", "running")
    run.pause()
    assert run.state == "pausing"
    assert run.resume()["state"] == "executing"
    hold.set()
    assert run.wait(10) == "completed"
    assert workflow_path(check_log(run)) == ["draft", "planning", "executing", "pausing",
                                             "executing", "completed"]


def test_cancel_a_paused_run(store):
    gate = Gate()
    run = looping_workflow(gate).start(store=store)
    wait_node(run, "long", "running")
    run.pause()
    wait_state(run, "paused")
    run.cancel()
    assert run.wait(10) == "cancelled"
    events = check_log(run)
    assert node_path(events, "long") == ["pending", "running", "paused", "cancelled"]
    assert workflow_path(events)[-3:] == ["paused", "cancelling", "cancelled"]


# -- approvals ---------------------------------------------------------------------------------


def approval_workflow(names=("review",)) -> tuple[Workflow, dict]:
    wf = Workflow("approvals")
    answers: dict = {}

    def make(name):
        def fn(ctx):
            answers[name] = ctx.approve(f"Use the result of {name}?")
            return answers[name]
        return fn

    for name in names:
        wf.step(name)(make(name))
    return wf, answers


def test_approve_with_the_node_omitted_when_one_is_pending(store):
    wf, answers = approval_workflow()
    run = wf.start(store=store)
    wait_state(run, "waiting_approval")
    snap = run.snapshot()
    [pending] = snap["run"]["pending_approvals"]
    assert (pending["node_id"], pending["prompt"]) == ("review", "Use the result of review?")
    assert snap["nodes"][0]["status"] == "waiting_approval"
    assert snap["nodes"][0]["approval"]["approval_id"] == pending["approval_id"]

    ack = run.approve(comment="fine by me")
    assert ack["ok"]
    assert run.wait(10) == "completed"
    assert answers == {"review": True}
    events = check_log(run)
    [received] = of_type(events, "approval_received")
    assert received["data"] == {"node_id": "review", "approval_id": pending["approval_id"],
                                "approved": True, "comment": "fine by me",
                                "command_id": ack["command_id"]}
    assert node_path(events, "review") == ["pending", "running", "waiting_approval", "running", "completed"]
    assert workflow_path(events) == ["draft", "planning", "executing", "waiting_approval",
                                     "executing", "completed"]
    assert run.snapshot()["run"]["pending_approvals"] == []


def test_wait_for_approval_returns_the_pending_approval_once_a_step_asks(store):
    wf, answers = approval_workflow(("first", "second"))
    gate = threading.Event()

    @wf.step()
    def slow(ctx):
        gate.wait(10)

    @wf.step(deps=["slow"])
    def late(ctx, slow):
        return ctx.approve("Late?")

    run = wf.start(store=store)
    first = run.wait_for_approval(timeout=10)  # whichever asks first
    assert first["node_id"] in ("first", "second") and first["approval_id"]
    with pytest.raises(TimeoutError, match="not asking for an approval"):
        run.wait_for_approval("late", timeout=0.2)  # `late` has not started
    run.approve("first")
    run.reject("second")
    gate.set()
    pending = run.wait_for_approval("late", timeout=10)
    assert pending["prompt"] == "Late?"
    run.approve("late")
    assert run.wait(10) == "completed"
    assert answers == {"first": True, "second": False}


def test_wait_for_approval_raises_when_the_run_settles_without_asking(store):
    wf = Workflow("no questions")
    wf.step("quiet")(lambda ctx: 1)
    run = wf.start(store=store)
    with pytest.raises(EngineError, match="completed: no approval was asked"):
        run.wait_for_approval(timeout=10)


def test_approval_commands_need_exactly_one_pending_approval(store):
    wf, answers = approval_workflow(("first", "second"))
    release = threading.Event()

    @wf.step()
    def steady():
        release.wait(10)

    run = wf.start(store=store)
    wait_until(lambda: len(run.snapshot()["run"]["pending_approvals"]) == 2, 10, "two pending approvals")
    before = run.events().dicts()
    with pytest.raises(CommandRejected, match="2 approvals are pending") as info:
        run.approve()
    assert info.value.code == "ambiguous_approval"
    assert run.events().dicts() == before  # a refused command changes nothing

    run.reject("second", comment="no")
    run.approve(node_id="first")
    wait_node(run, "first", "completed")
    wait_node(run, "second", "completed")
    assert answers == {"first": True, "second": False}
    with pytest.raises(CommandRejected, match="no approval is pending") as info:
        run.approve()
    assert info.value.code == "no_pending_approval"
    with pytest.raises(CommandRejected, match="no approval is pending on node 'steady'"):
        run.reject("steady")
    release.set()
    assert run.wait(10) == "completed"
    check_log(run)


def test_cancel_while_waiting_for_approval(store):
    wf, answers = approval_workflow()
    run = wf.start(store=store)
    wait_state(run, "waiting_approval")
    run.cancel()
    assert run.wait(10) == "cancelled"
    assert answers == {}
    assert run.snapshot()["run"]["pending_approvals"] == []
    assert node_path(check_log(run), "review")[-2:] == ["waiting_approval", "cancelled"]


# -- refused commands ----------------------------------------------------------------------------


def test_commands_for_unknown_runs_and_nodes(store):
    with pytest.raises(UnknownRun, match="unknown run 'nope'"):
        store.run("nope")
    ack = store.submit_command("nope", "pause")
    assert (ack["ok"], ack["code"]) == (False, "unknown_run")
    with pytest.raises(UnknownRun):
        Run(store, "nope").pause()

    gate = Gate()
    run = looping_workflow(gate).start(store=store)
    wait_node(run, "long", "running")
    with pytest.raises(UnknownNode, match="has no node 'ghost'"):
        run.retry("ghost")
    with pytest.raises(UnknownNode):
        run.approve("ghost")
    ack = store.submit_command(run.id, "explode")
    assert not ack["ok"] and "unknown action 'explode'" in ack["error"]
    gate.go.set()
    assert run.wait(10) == "completed"


def _unchanged(run, action):
    """Run ``action``; it must raise CommandRejected and leave the log and state as they were."""
    before_events, before_snap = run.events().dicts(), run.snapshot()
    with pytest.raises(CommandRejected) as info:
        action()
    assert run.events().dicts() == before_events
    assert run.snapshot() == before_snap
    return info.value


def test_illegal_commands_are_refused_and_change_nothing(store):
    gate = Gate()
    run = looping_workflow(gate).start(store=store)
    wait_node(run, "long", "running")
    err = _unchanged(run, run.resume)
    assert "cannot resume a run that is executing" in str(err) and err.code == "illegal_command"
    err = _unchanged(run, lambda: run.retry("long"))
    assert "cannot retry a node that is running" in str(err)
    gate.go.set()
    assert run.wait(10) == "completed"

    err = _unchanged(run, run.pause)
    assert "cannot pause a run that is completed" in str(err)
    _unchanged(run, lambda: run.retry("after"))  # a completed node
    _unchanged(run, run.cancel)
    _unchanged(run, run.approve)
    assert run.state == "completed"
    check_log(run)


def test_the_same_command_id_is_applied_once(store):
    gate = Gate()
    run = looping_workflow(gate).start(store=store)
    wait_node(run, "long", "running")
    first = store.submit_command(run.id, "pause", command_id="cmd-1")
    second = store.submit_command(run.id, "pause", command_id="cmd-1")
    assert first == second and first["ok"] and first["command_id"] == "cmd-1"
    wait_state(run, "paused")
    third = store.submit_command(run.id, "pause", command_id="cmd-1")  # after it was applied
    assert third == first
    # The Run handle with the same id returns the first ack (with the state the command
    # led to) instead of pausing again.
    assert run.command("pause", command_id="cmd-1")["state"] == "pausing"
    reused = store.submit_command(run.id, "resume", command_id="cmd-1")
    assert (reused["ok"], reused["code"]) == (False, "command_id_reused")

    events = run.events().dicts()
    to_pausing = [e for e in events if e["data"].get("new_state") == "pausing"]
    assert len(to_pausing) == 1 and to_pausing[0]["event_type"] == "workflow_state_changed"
    assert to_pausing[0]["data"]["command_id"] == "cmd-1"
    assert store.command_status("cmd-1")["status"] == "applied"
    run.resume()
    gate.go.set()
    assert run.wait(10) == "completed"
    check_log(run)



def test_a_command_sent_as_the_run_finishes_gets_an_answer(store, monkeypatch):
    """A command the store accepted while the run was executing must be answered even
    if the run finished before its executor read it; otherwise its sender waits for ever.

    The interleaving is forced: the executor's read of pending commands returns what it
    saw just before the command arrived, and only after the run has completed."""
    wf = Workflow("last word")
    armed, reading = threading.Event(), threading.Event()
    read = store.pending_commands

    def slow_read(run_id):
        rows = read(run_id)
        if armed.is_set() and not reading.is_set():
            reading.set()
            deadline = time.monotonic() + 5
            while store.run_doc(run_id)["state"] != "completed" and time.monotonic() < deadline:
                time.sleep(0.001)
        return rows

    @wf.step()
    def only(ctx):
        armed.set()
        reading.wait(5)  # the executor has just read the (empty) list of commands
        ack = store.submit_command(ctx.run_id, "pause", command_id="late-pause")
        assert ack["ok"]  # the run is executing: the store accepts the command
        return "done"

    monkeypatch.setattr(store, "pending_commands", slow_read)
    run = wf.start(store=store)
    assert run.wait(10) == "completed"
    status = wait_until(lambda: store.command_status("late-pause")["status"] != "pending" and
                        store.command_status("late-pause"), 5, "the late command to be answered")
    assert status == {"status": "rejected", "error": "cannot pause a run that is completed",
                      "code": "illegal_command", "state": "completed"}
    check_log(run)


def test_pausing_as_the_last_step_finishes_ends_the_run(store):
    """Nothing is left to pause: the run completes instead of sitting paused."""
    wf = Workflow("pause at the end")
    started, go = threading.Event(), threading.Event()

    @wf.step()
    def last():
        started.set()
        go.wait(10)
        return 1

    run = wf.start(store=store)
    assert started.wait(10)
    run.pause()
    assert run.state == "pausing"
    go.set()
    assert run.wait(10) == "completed"
    events = check_log(run)
    assert [e["data"]["new_state"] for e in events if e["event_type"].startswith("workflow_")][-2:] \
        == ["pausing", "completed"]
