"""Failures: dependents are skipped, the rest goes on, automatic retries, run.retry()."""

from __future__ import annotations

import pytest

from engine import CommandRejected, Workflow
from engine_support import check_log, node_path, node_status, of_type, wait_until, workflow_path


def test_failure_skips_dependents_and_independent_branches_finish(store):
    wf = Workflow("failing")

    @wf.step()
    def root():
        return 7

    @wf.step(deps=["root"])
    def bad(root):
        raise ValueError(f"bad input {root}")

    @wf.step(deps=["bad"])
    def after_bad(bad):
        return bad

    @wf.step(deps=["after_bad"])
    def after_after(after_bad):
        return after_bad

    @wf.step(deps=["root"])
    def good(ctx, root):
        # Finish only once the failure is on record: the failure must not stop this branch.
        run = store.run(ctx.run_id)
        wait_until(lambda: node_status(run, "bad") == "failed", 10, "bad to fail")
        return root + 1

    @wf.step(deps=["good"])
    def good2(good):
        return good * 2

    run = wf.run(store=store, timeout=30)
    assert run.state == "failed"
    assert run.result("good2") == 16
    snap = run.snapshot()
    status = {n["id"]: n["status"] for n in snap["nodes"]}
    assert status == {"root": "completed", "bad": "failed", "after_bad": "skipped",
                      "after_after": "skipped", "good": "completed", "good2": "completed"}
    assert snap["run"]["reason"] == "step_failed"

    events = check_log(run)
    failed = of_type(events, "step_failed")
    assert len(failed) == 1
    err = failed[0]["data"]["error"]
    assert failed[0]["data"]["node_id"] == "bad"
    assert (err["type"], err["message"]) == ("ValueError", "bad input 7")
    assert "Traceback (most recent call last)" in err["traceback"]
    assert 'raise ValueError(f"bad input {root}")' in err["traceback"] and "in bad" in err["traceback"]
    # The node document shows the same error, and the run's end says which node failed.
    assert next(n for n in snap["nodes"] if n["id"] == "bad")["error"] == err
    wf_failed = of_type(events, "workflow_failed")
    assert len(wf_failed) == 1 and wf_failed[0]["data"]["failed_nodes"] == ["bad"]
    assert wf_failed[0]["seq"] == events[-1]["seq"]
    # The healthy branch kept going after the failure was recorded.
    good2_started = next(e["seq"] for e in of_type(events, "step_started") if e["data"]["node_id"] == "good2")
    assert good2_started > failed[0]["seq"]
    assert node_path(events, "after_bad") == ["pending", "skipped"]
    assert not [e for e in of_type(events, "step_started") if e["data"]["node_id"].startswith("after")]


def test_automatic_retries_until_success(store):
    wf = Workflow("flaky")
    attempts = []

    @wf.step(retries=2, retry_delay=0.01)
    def flaky(ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} timed out")
        return "third time lucky"

    @wf.step(deps=["flaky"])
    def use(flaky):
        return flaky.upper()

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed"
    assert attempts == [1, 2, 3]
    assert run.result("use") == "THIRD TIME LUCKY"
    events = check_log(run)
    mine = [e for e in events if e["data"].get("node_id") == "flaky" and "old_status" in e["data"]]
    assert [(e["event_type"], e["data"]["attempt"]) for e in mine] == [
        ("step_started", 1), ("step_retry_started", 1),
        ("step_started", 2), ("step_retry_started", 2),
        ("step_started", 3), ("step_completed", 3)]
    retries = of_type(events, "step_retry_started")
    assert [r["data"]["error"]["message"] for r in retries] == ["attempt 1 timed out", "attempt 2 timed out"]
    assert [r["data"]["error"]["type"] for r in retries] == ["ConnectionError"] * 2
    assert [r["data"]["delay_s"] for r in retries] == [0.01, 0.02]  # exponential backoff
    assert not of_type(events, "step_failed")
    node = next(n for n in run.snapshot()["nodes"] if n["id"] == "flaky")
    assert (node["status"], node["attempt"], node["error"]) == ("completed", 3, None)


def test_retries_exhausted_fail_the_step(store):
    wf = Workflow("hopeless")

    @wf.step(retries=1, retry_delay=0.01)
    def hopeless():
        raise RuntimeError("no luck")

    run = wf.run(store=store, timeout=30)
    assert run.state == "failed"
    events = check_log(run)
    assert node_path(events, "hopeless") == ["pending", "running", "retrying", "running", "failed"]
    failed = of_type(events, "step_failed")[0]["data"]
    assert failed["attempt"] == 2 and failed["error"]["message"] == "no luck"


def test_run_retry_reruns_the_node_and_its_skipped_dependents(store):
    wf = Workflow("retry me")
    calls = {"fetch": 0, "analyse": 0, "report": 0}

    @wf.step()
    def fetch():
        calls["fetch"] += 1
        if calls["fetch"] == 1:
            raise OSError("server unavailable")
        return [1, 2, 3]

    @wf.step(deps=["fetch"])
    def analyse(fetch):
        calls["analyse"] += 1
        return sum(fetch)

    @wf.step(deps=["analyse"])
    def report(analyse):
        calls["report"] += 1
        return f"total {analyse}"

    @wf.step()
    def other():
        return "independent"

    run = wf.run(store=store, timeout=30)
    assert run.state == "failed"
    assert node_status(run, "analyse") == node_status(run, "report") == "skipped"
    assert run.snapshot()["run"]["finished_at"] is not None

    ack = run.retry("fetch")
    assert ack["ok"] is True and ack["command_id"]
    assert run.wait(30) == "completed"
    assert run.result("report") == "total 6"
    assert calls == {"fetch": 2, "analyse": 1, "report": 1}

    events = check_log(run)
    assert workflow_path(events) == ["draft", "planning", "executing", "failed", "executing", "completed"]
    assert node_path(events, "fetch") == ["pending", "running", "failed", "retrying", "running", "completed"]
    assert node_path(events, "report") == ["pending", "skipped", "pending", "running", "completed"]
    assert node_path(events, "other") == ["pending", "running", "completed"]  # not re-run
    reopened = [e for e in events if e["data"].get("old_state") == "failed"][0]
    assert reopened["data"]["command_id"] == ack["command_id"]
    snap = run.snapshot()
    assert snap["run"]["reason"] is None and snap["run"]["finished_at"] >= snap["run"]["started_at"]
    assert next(n for n in snap["nodes"] if n["id"] == "fetch")["attempt"] == 2


def test_retrying_one_of_two_failures_fails_again(store):
    wf = Workflow("two failures")
    tries = {"a": 0}

    @wf.step()
    def a():
        tries["a"] += 1
        if tries["a"] == 1:
            raise ValueError("a once")
        return 1

    @wf.step()
    def b():
        raise ValueError("b always")

    @wf.step(deps=["a", "b"])
    def c(a, b):
        return a + b

    run = wf.run(store=store, timeout=30)
    assert run.state == "failed"
    run.retry("a")
    assert run.wait(30) == "failed"
    events = check_log(run)
    assert node_status(run, "a") == "completed"
    assert node_path(events, "c") == ["pending", "skipped"]  # b still blocks it
    assert of_type(events, "workflow_failed")[-1]["data"]["failed_nodes"] == ["b"]
    with pytest.raises(CommandRejected, match="only failed nodes can be retried"):
        run.retry("a")


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")


def test_an_exception_that_cannot_be_printed_still_fails_its_step(store):
    wf = Workflow("unprintable")

    @wf.step()
    def bad():
        raise _Unprintable("secret")

    run = wf.run(store=store, timeout=10)
    assert run.state == "failed"
    error = run.snapshot()["nodes"][0]["error"]
    assert error["type"] == "_Unprintable"
    assert error["message"] == "_Unprintable('secret')"  # its repr, where str() fails
    assert "raise _Unprintable" in error["traceback"]
    check_log(run)
