"""Steps on a Dask cluster (``wf.start(store, dask=client)``): a real ``LocalCluster``
with two worker processes of one thread each.

The executor and the log stay in this process; step bodies run in the workers. Step
functions are closures of the tests (shipped by value); they talk to the test through
files in ``tmp_path`` (same machine), never through shared memory.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from engine import EngineError, Workflow, WorkflowDefinitionError  # noqa: E402
from engine.dask import INLINE_RESULT_BYTES  # noqa: E402
from engine.runtime import local_executor  # noqa: E402
from engine_support import (  # noqa: E402
    DASK_TIMEOUT,
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

# The workers import nothing from the tests: functions defined here travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMEOUT = DASK_TIMEOUT


def node_events(events: list[dict], node_id: str) -> list[dict]:
    return [e for e in events if e["data"].get("node_id") == node_id]


def wait_idle(client) -> None:
    """Wait until no task is processing on the cluster."""
    wait_until(lambda: not any(client.processing().values()), TIMEOUT, "the cluster to be idle",
               interval=0.05, context=client.processing)


def touch(path) -> None:
    with open(path, "w"):
        pass


def test_ctx_calls_on_workers_land_in_order_and_results_flow(store, healthy, tmp_path):
    wf = Workflow("dask ctx", description="every ctx call from a worker")
    out = str(tmp_path / "fit.txt")

    @wf.step()
    def load(ctx):
        for i in range(20):
            ctx.progress((i + 1) / 20, f"row {i}")
        ctx.checkpoint()
        return {"pid": os.getpid(), "rows": list(range(5))}

    @wf.step(deps=["load"])
    def fit(ctx, load):
        ctx.message("Looks fine", agent="engineer")
        ctx.thinking("the residuals are flat", agent="engineer")
        ctx.tool_call("polyfit", {"deg": 2}, result=[1.0, 2.0], agent="engineer")
        ctx.cost(model="m", input_tokens=10, output_tokens=5, usd=0.25)
        ctx.metric("chi2", 1.5, step=1, unit="")
        with open(out, "w") as f:
            f.write("v1")
        ctx.file(out, description="the fit")
        ctx.checkpoint()
        with open(out, "w") as f:
            f.write("v2, longer")
        ctx.file(out)
        ctx.progress(1.0, f"attempt {ctx.attempt}")
        return sum(load["rows"]) * 2

    @wf.step(deps=["load", "fit"])
    def report(**results):
        return f"{results['fit']} from {len(results['load']['rows'])} rows"

    @wf.step()
    def big():  # a result too big to ride in a message: fetched from the worker
        return b"x" * (INLINE_RESULT_BYTES * 4)

    @wf.step(deps=["big"])
    def size(big):
        return len(big)

    run = wf.run(store=store, dask=healthy, timeout=TIMEOUT)
    assert run.state == "completed"
    assert run.result("fit") == 20
    assert run.result("report") == "20 from 5 rows"
    assert run.result("big") == b"x" * (INLINE_RESULT_BYTES * 4)
    assert run.result("size") == INLINE_RESULT_BYTES * 4
    assert run.result("load")["pid"] != os.getpid()  # it ran in a worker process
    assert run.result("load")["pid"] in healthy.run(os.getpid).values()

    events = check_log(run)  # gap-free seqs, typed, transitions chain, replay == snapshot
    load_ev = node_events(events, "load")
    assert [e["event_type"] for e in load_ev] == (
        ["step_started"] + ["step_progress"] * 20 + ["step_completed"])
    assert [e["data"]["message"] for e in load_ev[1:-1]] == [f"row {i}" for i in range(20)]
    assert [e["data"]["progress"] for e in load_ev[1:-1]] == [(i + 1) / 20 for i in range(20)]
    fit_ev = node_events(events, "fit")
    assert [e["event_type"] for e in fit_ev] == [
        "step_started", "agent_message", "agent_thinking", "agent_tool_call", "cost_update",
        "metric_update", "file_created", "file_updated", "step_progress", "step_completed"]
    assert fit_ev[3]["data"]["arguments"] == {"deg": 2}
    assert fit_ev[3]["data"]["result"] == [1.0, 2.0]
    assert fit_ev[6]["data"]["path"] == out and fit_ev[6]["data"]["size"] == 2
    assert fit_ev[7]["data"]["size"] == len("v2, longer")
    assert fit_ev[8]["data"]["message"] == "attempt 1"
    # Every step's events come after its start and before its completion; dependents
    # start only after what they depend on completed.
    seq = {(e["event_type"], e["data"].get("node_id")): e["seq"] for e in events}
    assert seq[("step_started", "fit")] > seq[("step_completed", "load")]
    assert seq[("step_started", "report")] > seq[("step_completed", "fit")]
    assert seq[("step_started", "size")] > seq[("step_completed", "big")]
    assert workflow_path(events) == ["draft", "planning", "executing", "completed"]

    snap = run.snapshot()
    nodes = {n["id"]: n for n in snap["nodes"]}
    assert nodes["fit"]["result_preview"] == "20"
    assert nodes["fit"]["progress"] == 1.0
    assert [f["path"] for f in nodes["fit"]["files"]] == [out]
    assert snap["run"]["cost_usd"] == pytest.approx(0.25) == nodes["fit"]["cost_usd"]
    assert snap["run"]["counts"]["completed"] == 5


def test_a_failing_step_retries_per_its_retries(store, healthy):
    wf = Workflow("dask flaky")

    @wf.step(retries=2, retry_delay=0.01)
    def flaky(ctx):
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} timed out")
        return "third time lucky"

    @wf.step(retries=1, retry_delay=0.01)
    def hopeless(ctx):
        ctx.progress(0.5, f"try {ctx.attempt}")
        raise RuntimeError("no luck")

    @wf.step(deps=["hopeless"])
    def after(hopeless):
        return hopeless

    run = wf.run(store=store, dask=healthy, timeout=TIMEOUT)
    assert run.state == "failed"
    assert run.result("flaky") == "third time lucky"
    events = check_log(run)
    assert node_path(events, "flaky") == ["pending", "running", "retrying", "running", "retrying",
                                          "running", "completed"]
    retries = [e for e in of_type(events, "step_retry_started") if e["data"]["node_id"] == "flaky"]
    assert [(r["data"]["error"]["type"], r["data"]["error"]["message"]) for r in retries] == [
        ("ConnectionError", "attempt 1 timed out"), ("ConnectionError", "attempt 2 timed out")]
    tb = retries[0]["data"]["error"]["traceback"]
    assert 'raise ConnectionError(f"attempt {ctx.attempt} timed out")' in tb and "in flaky" in tb
    assert [r["data"]["delay_s"] for r in retries] == [0.01, 0.02]

    assert node_path(events, "hopeless") == ["pending", "running", "retrying", "running", "failed"]
    hopeless_ev = node_events(events, "hopeless")
    assert [e["event_type"] for e in hopeless_ev] == [
        "step_started", "step_progress", "step_retry_started",
        "step_started", "step_progress", "step_failed"]
    progress = of_type(hopeless_ev, "step_progress")
    assert [e["data"]["message"] for e in progress] == ["try 1", "try 2"]
    failed = of_type(events, "step_failed")[0]["data"]
    assert failed["attempt"] == 2 and failed["error"]["message"] == "no luck"
    assert node_path(events, "after") == ["pending", "skipped"]
    assert of_type(events, "workflow_failed")[0]["data"]["failed_nodes"] == ["hopeless"]


def test_unencodable_text_from_a_worker_is_escaped_there(store, healthy):
    wf = Workflow("dask bad strings")

    @wf.step()
    def talk(ctx):
        ctx.message("lone \ud800", agent="a\udcff")
        ctx.tool_call("ls", {"k\udce9": "v"}, result=["\udce9"])
        raise ValueError("broke \udce9")

    run = wf.run(store=store, dask=healthy, timeout=TIMEOUT)
    assert run.state == "failed"
    events = check_log(run)
    said = of_type(events, "agent_message")[0]["data"]
    assert (said["message"], said["agent"]) == ("lone \\ud800", "a\\udcff")
    tool = of_type(events, "agent_tool_call")[0]["data"]
    assert (tool["arguments"], tool["result"]) == ({"k\\udce9": "v"}, ["\\udce9"])
    assert of_type(events, "step_failed")[0]["data"]["error"]["message"] == "broke \\udce9"


def looping(tmp_path, name: str):
    """A step that marks that it started, loops on ctx.checkpoint() until ``go``, and
    marks that it finished."""
    started, done = str(tmp_path / f"{name}.started"), str(tmp_path / f"{name}.done")
    go = str(tmp_path / "go")

    def step(ctx):
        touch(started)
        while not os.path.exists(go):
            ctx.checkpoint()
            time.sleep(0.005)
        touch(done)
        return f"{name} done"

    return step


def wait_started(tmp_path, *names: str) -> None:
    wait_until(lambda: all((tmp_path / f"{name}.started").exists() for name in names), TIMEOUT,
               f"{', '.join(names)} to start on the workers")


def test_pause_and_resume_with_steps_on_workers(store, healthy, tmp_path):
    wf = Workflow("dask pause")
    wf.step("long_a")(looping(tmp_path, "long_a"))
    wf.step("long_b")(looping(tmp_path, "long_b"))
    # Both worker threads are busy: this one is submitted but waits in Dask's queue.
    wf.step("queued")(looping(tmp_path, "queued"))

    @wf.step(deps=["long_a", "queued"])
    def after(long_a, queued):
        touch(tmp_path / "after.started")
        return f"{long_a}, {queued}"

    run = wf.start(store=store, dask=healthy)
    wait_started(tmp_path, "long_a", "long_b")
    wait_node(run, "queued", "running", timeout=TIMEOUT)
    ack = run.pause()
    assert ack["ok"] and ack["state"] in ("pausing", "paused")
    assert wait_state(run, "paused", timeout=TIMEOUT) == "paused"
    assert statuses(run) == {"long_a": "paused", "long_b": "paused", "queued": "paused",
                             "after": "pending"}
    assert not (tmp_path / "queued.started").exists()  # held back: its code never began

    assert run.resume()["state"] == "executing"
    wait_until(lambda: {node_status(run, "long_a"), node_status(run, "long_b")} == {"running"},
               TIMEOUT, "the long steps to resume")
    touch(tmp_path / "go")
    assert run.wait(TIMEOUT) == "completed"
    assert run.result("after") == "long_a done, queued done"
    events = check_log(run)
    assert workflow_path(events) == ["draft", "planning", "executing", "pausing", "paused",
                                     "executing", "completed"]
    for name in ("long_a", "long_b", "queued"):
        assert node_path(events, name) == ["pending", "running", "paused", "running", "completed"]
    paused_at = of_type(events, "workflow_paused")[0]["seq"]
    resumed_at = of_type(events, "workflow_resumed")[0]["seq"]
    for e in events:  # nothing ran between the pause and the resume
        if paused_at < e["seq"] < resumed_at:
            pytest.fail(f"event while paused: {e}")


def test_cancel_with_steps_on_workers(store, healthy, tmp_path):
    wf = Workflow("dask cancel")
    wf.step("long_a")(looping(tmp_path, "long_a"))
    wf.step("long_b")(looping(tmp_path, "long_b"))
    wf.step("queued")(looping(tmp_path, "queued"))

    @wf.step(deps=["long_a"])
    def after(long_a):
        touch(tmp_path / "after.started")

    run = wf.start(store=store, dask=healthy)
    wait_started(tmp_path, "long_a", "long_b")
    wait_node(run, "queued", "running", timeout=TIMEOUT)
    ack = run.cancel()
    assert ack["ok"] and ack["state"] in ("cancelling", "cancelled")
    assert run.wait(TIMEOUT) == "cancelled"
    assert statuses(run) == {"long_a": "cancelled", "long_b": "cancelled", "queued": "cancelled",
                             "after": "cancelled"}
    assert not (tmp_path / "queued.started").exists()  # its task never ran the step
    assert not (tmp_path / "after.started").exists()
    events = check_log(run)
    assert workflow_path(events) == ["draft", "planning", "executing", "cancelling", "cancelled"]
    for name in ("long_a", "long_b", "queued"):
        assert node_path(events, name) == ["pending", "running", "cancelled"]
    assert not of_type(events, "step_failed")  # a cancelled step is not a failure
    # The steps really stopped on the workers (raised Cancelled at their checkpoint).
    touch(tmp_path / "go")
    wait_idle(healthy)
    assert not list(tmp_path.glob("*.done"))
    assert run.events(after_seq=events[-1]["seq"]).dicts() == []


def test_approval_requested_on_a_worker_answered_with_run_approve(store, healthy):
    wf = Workflow("dask approvals")

    @wf.step()
    def review(ctx):
        ctx.progress(0.5, "asking")
        ok = ctx.approve("Use this fit?")
        ctx.progress(1.0, "answered")
        return "approved" if ok else "rejected"

    @wf.step(deps=["review"])
    def second(ctx, review):
        return review + (", approved" if ctx.approve("And this one?") else ", rejected")

    run = wf.start(store=store, dask=healthy)
    wait_node(run, "review", "waiting_approval", timeout=TIMEOUT)
    assert wait_state(run, "waiting_approval", timeout=TIMEOUT) == "waiting_approval"
    pending = next(n for n in run.snapshot()["nodes"] if n["id"] == "review")["approval"]
    assert pending["prompt"] == "Use this fit?"
    run.approve(comment="fine")
    wait_node(run, "second", "waiting_approval", timeout=TIMEOUT)
    run.reject("second", comment="no")
    assert run.wait(TIMEOUT) == "completed"
    assert run.result("second") == "approved, rejected"
    events = check_log(run)
    assert [e["event_type"] for e in node_events(events, "review")] == [
        "step_started", "step_progress", "dag_node_status_changed", "approval_requested",
        "approval_received", "dag_node_status_changed", "step_progress", "step_completed"]
    assert node_path(events, "review") == ["pending", "running", "waiting_approval", "running",
                                           "completed"]
    received = of_type(events, "approval_received")
    assert [(r["data"]["approved"], r["data"].get("comment")) for r in received] == [
        (True, "fine"), (False, "no")]
    assert workflow_path(events) == ["draft", "planning", "executing", "waiting_approval",
                                     "executing", "waiting_approval", "executing", "completed"]


def test_a_worker_step_adds_steps(store, healthy):
    wf = Workflow("dask planner")

    @wf.step()
    def plan(ctx):
        def child(ctx, plan):
            ctx.progress(1.0, "child ran")
            return plan + "!"

        ctx.add_step(child, deps=["plan"], name="child")
        try:
            ctx.add_step(child, deps=["plan"], name="child")
        except WorkflowDefinitionError as exc:  # the executor's refusal, raised in the step
            ctx.message(f"refused: {exc}")
        return "planned"

    run = wf.run(store=store, dask=healthy, timeout=TIMEOUT)
    assert run.state == "completed"
    assert run.result("child") == "planned!"
    events = check_log(run)
    assert [e["event_type"] for e in node_events(events, "plan")] == [
        "step_started", "agent_message", "step_completed"]
    assert "duplicate step name 'child'" in of_type(events, "agent_message")[0]["data"]["message"]
    updated = of_type(events, "dag_updated")
    assert len(updated) == 1 and updated[0]["data"]["by_node"] == "plan"
    assert node_path(events, "child") == ["pending", "running", "completed"]


def killable_workflow(name: str, retries: int) -> Workflow:
    """``victim`` reports its worker's pid, then loops at checkpoints on attempt 1 (the
    test kills that worker); a retry returns at once."""
    wf = Workflow(name)

    @wf.step(retries=retries, retry_delay=0.01)
    def victim(ctx):
        ctx.message(f"pid {os.getpid()}")
        if ctx.attempt == 1:
            while True:
                ctx.checkpoint()
                time.sleep(0.01)
        return os.getpid()

    @wf.step(deps=["victim"])
    def after(victim):
        return victim

    return wf


def kill_victim_worker(run) -> int:
    """Kill the worker process running ``victim``'s first attempt; return its pid."""
    said = wait_until(lambda: of_type(run.events().dicts(), "agent_message"), TIMEOUT,
                      "the victim to report its pid")
    pid = int(said[0]["data"]["message"].split()[1])
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_worker_killed_mid_step_is_a_failed_attempt_and_the_retry_completes(store, healthy):
    run = killable_workflow("dask kill, retried", retries=1).start(store=store, dask=healthy)
    pid = kill_victim_worker(run)
    assert run.wait(TIMEOUT) == "completed"
    assert run.result("victim") != pid  # the retry ran on another (or the restarted) worker
    assert run.result("after") == run.result("victim")
    events = check_log(run)
    assert node_path(events, "victim") == ["pending", "running", "retrying", "running", "completed"]
    retry = of_type(events, "step_retry_started")[0]["data"]
    assert retry["error"]["type"] == "WorkerLost"
    assert f"(pid {pid})" in retry["error"]["message"]
    assert "attempt 1 of step 'victim' was lost" in retry["error"]["message"]
    assert "died or was cut off from the scheduler" in retry["error"]["message"]
    # Dask re-ran the task elsewhere, as it does for a dead worker's tasks; the re-run
    # found the attempt's claim taken and refused to run the step a second time.
    assert "Dask ran it again on tcp://" in retry["error"]["message"]
    assert "which was refused" in retry["error"]["message"]
    # The killed attempt's message came before its failure; the retry is attempt 2.
    victim = node_events(events, "victim")
    assert [(e["event_type"], e["data"].get("attempt")) for e in victim] == [
        ("step_started", 1), ("agent_message", None), ("step_retry_started", 1),
        ("step_started", 2), ("agent_message", None), ("step_completed", 2)]
    # Dask did not run attempt 1 again behind the executor's back: one start message each.
    assert len(of_type(victim, "agent_message")) == 2


def test_a_worker_killed_mid_step_without_retries_fails_the_run(store, healthy):
    run = killable_workflow("dask kill, no retries", retries=0).start(store=store, dask=healthy)
    pid = kill_victim_worker(run)
    assert run.wait(TIMEOUT) == "failed"
    events = check_log(run)
    assert node_path(events, "victim") == ["pending", "running", "failed"]
    assert node_path(events, "after") == ["pending", "skipped"]
    failed = of_type(events, "step_failed")[0]["data"]
    assert failed["error"]["type"] == "WorkerLost" and f"(pid {pid})" in failed["error"]["message"]
    wf_failed = of_type(events, "workflow_failed")[0]["data"]
    assert wf_failed["failed_nodes"] == ["victim"]
    assert run.snapshot()["run"]["reason"] == "step_failed"
    # Nothing more happens: the re-run Dask tried refused to run the step.
    wait_idle(healthy)
    assert run.events(after_seq=events[-1]["seq"]).dicts() == []
    assert local_executor(run.id) is not None


class DropOnce:
    """Stands in for a run's route from the Dask topic: loses the message with ``index``."""

    def __init__(self, route, index: int):
        self.route, self.index, self.dropped = route, index, []

    def put(self, item):
        if item[0] == "msg" and item[1][2] == self.index and not self.dropped:
            self.dropped.append(item)
            return
        self.route.put(item)


def lossy_run(store, client, tmp_path, retries: int = 0):
    """A run whose one step sends three messages once ``go`` exists; its second message
    (index 1) never arrives through the subscription."""
    wf = Workflow("dask lossy")
    go = str(tmp_path / "go")

    @wf.step(retries=retries, retry_delay=0.01)
    def chatty(ctx):
        while not os.path.exists(go):
            time.sleep(0.005)
        for i in range(3):
            ctx.progress((i + 1) / 3, f"part {i}")
        return "said it all"

    run = wf.start(store=store, dask=client)
    runner = local_executor(run.id).pool
    lossy = runner._channel.routes[run.id] = DropOnce(runner._channel.routes[run.id], index=1)
    touch(go)
    return run, lossy


def test_a_message_lost_on_the_way_is_fetched_again_from_the_scheduler(store, healthy, tmp_path,
                                                                       monkeypatch):
    import engine.dask.runner

    monkeypatch.setattr(engine.dask.runner, "RECOVER_AFTER_S", 0.05)
    run, lossy = lossy_run(store, healthy, tmp_path)
    assert run.wait(TIMEOUT) == "completed"
    assert lossy.dropped  # one message did not come through the stream...
    events = check_log(run)  # ...and the log is still complete and in order
    assert [e["data"]["message"] for e in of_type(events, "step_progress")] == [
        "part 0", "part 1", "part 2"]
    assert node_events(events, "chatty")[-1]["event_type"] == "step_completed"


def test_messages_that_never_arrive_fail_the_attempt(store, healthy, tmp_path, monkeypatch):
    import engine.dask.runner

    monkeypatch.setattr(engine.dask.runner, "RECOVER_AFTER_S", 0.05)
    monkeypatch.setattr(engine.dask.runner, "EVENTS_GRACE_S", 0.2)
    monkeypatch.setattr(healthy, "get_events", lambda topic=None: ())  # the scheduler's log too
    run, lossy = lossy_run(store, healthy, tmp_path)
    assert run.wait(TIMEOUT) == "failed"
    events = check_log(run)
    # What came before the gap is recorded; nothing after it; the attempt failed.
    assert [e["event_type"] for e in node_events(events, "chatty")] == [
        "step_started", "step_progress", "step_failed"]
    error = of_type(events, "step_failed")[0]["data"]["error"]
    assert error["type"] == "EventsLost"
    assert "attempt 1 of step 'chatty' finished on worker tcp://" in error["message"]
    assert "its messages from #1 on never reached the executor" in error["message"]


def test_a_scheduler_address_works_like_a_client(store, healthy):
    wf = Workflow("dask by address")

    @wf.step()
    def one(ctx):
        ctx.progress(1.0, "one")
        return 1

    @wf.step(deps=["one"])
    def two(one):
        return one + 1

    run = wf.run(store=store, dask=healthy.scheduler.address, timeout=TIMEOUT)
    assert run.state == "completed" and run.result("two") == 2
    # The completed run stays held by this process (a re-run may come), on the cluster too.
    assert run.rerun("one")["ok"] and run.wait(TIMEOUT) == "completed"
    check_log(run)
    ex = local_executor(run.id)
    runner = ex.pool
    ex.end_at_exit(TIMEOUT)  # as when the process exits
    assert runner.join(TIMEOUT)  # the executor stopped, the runner cleaned up...
    assert runner.client is not healthy and runner.client.status == "closed"  # ...its own client


def test_an_unreachable_scheduler_creates_no_run(store):
    import dask

    wf = Workflow("nowhere")

    @wf.step()
    def anything():
        return None

    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        with pytest.raises(EngineError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
            wf.start(store=store, dask="tcp://127.0.0.1:9")
    assert store.runs() == []


def test_a_run_on_dask_is_resumed_on_dask_with_its_results_from_the_store(store, healthy, tmp_path):
    """Results come back from the workers to the executor, which keeps them; a resume on
    the cluster runs only the failed step and what follows, feeding it the stored result."""
    counter, broken = str(tmp_path / "counts"), str(tmp_path / "broken")
    touch(broken)

    def build():
        wf = Workflow("dask resume")

        @wf.step()
        def load():
            with open(counter, "a") as f:
                f.write("load\n")
            return list(range(5))

        @wf.step(deps=["load"])
        def fit(load):
            with open(counter, "a") as f:
                f.write("fit\n")
            if os.path.exists(broken):
                raise RuntimeError("fit is broken")
            return sum(load)

        return wf

    run = build().start(store, dask=healthy)
    assert run.wait(TIMEOUT) == "failed"
    os.remove(broken)
    resumed = build().resume(run.id, store, dask=healthy)
    assert resumed.wait(TIMEOUT) == "completed"
    assert open(counter).read().split() == ["load", "fit", "fit"]
    assert store.load_result(run.id, "fit") == 10
    check_log(resumed)
