"""Text the log cannot hold (lone surrogates: a non-UTF-8 file name, a message, a tool
result, an exception) is escaped in the step that reports it; it never reaches the
journal, and the journal never refuses one run for another run's data."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

import pytest

from engine import Workflow
from engine.events import new_event
from engine.runtime import journal, local_executor
from engine.store.base import Commit
from engine_support import check_log, of_type, wait_until


class HeldJournal:
    """Holds the store's journal writer inside a batch until ``release()``: everything
    recorded meanwhile is then written together, in one batch (one transaction)."""

    def __init__(self, store, run_id: str):
        self.run_id, self.future = run_id, None
        self.entered, self.released = threading.Event(), threading.Event()
        journal(store).submit(self)
        assert self.entered.wait(10), "the journal never reached the held item"

    def drain(self) -> Commit:  # called by the journal's writer, as for an executor's outbox
        self.entered.set()
        self.released.wait(30)
        return Commit(self.run_id)  # writes nothing

    def release(self) -> None:
        self.released.set()


class OddRepr:
    def __repr__(self) -> str:
        return "<odd \udcff>"


def test_unencodable_text_is_escaped_and_never_harms_the_run_batched_with_it(store, tmp_path):
    go = threading.Event()
    bad_name = os.fsencode(tmp_path) + b"/caf\xe9.txt"  # Latin-1, not UTF-8
    with open(bad_name, "wb") as f:
        f.write(b"data")
    escaped_path = str(tmp_path) + "/caf\\udce9.txt"

    bad = Workflow("bad strings")

    @bad.step()
    def talk(ctx):
        assert go.wait(10)
        ctx.message("lone \ud800 surrogate", agent="eng\udcff")
        with open(ctx.file(bad_name, description="named with bytes"), "rb") as f:  # a usable path
            assert f.read() == b"data"
        ctx.file(os.fsdecode(bad_name))  # the same file, named by a str: an update
        ctx.tool_call("ls", {"dir": "caf\udce9"}, result=["caf\udce9.txt", {"k\udc80": 1}])
        ctx.progress(0.5, "\udce9")
        return OddRepr()

    @bad.step()
    def crash(ctx):
        assert go.wait(10)
        raise ValueError("cannot open caf\udce9.txt")

    good = Workflow("good")

    @good.step()
    def count(ctx):
        assert go.wait(10)
        for i in range(50):
            ctx.progress((i + 1) / 50, f"row {i}")
        return 50

    a, b = bad.start(store=store), good.start(store=store)
    wait_until(lambda: {n["status"] for n in a.snapshot()["nodes"]} == {"running"}
               and b.snapshot()["nodes"][0]["status"] == "running", 10, "every step to start")
    # Both runs' last events (the bad strings, the completion) go to the store in one batch.
    held = HeldJournal(store, b.id)
    go.set()
    wait_until(lambda: (local_executor(a.id).view.run["state"], local_executor(b.id).view.run["state"])
               == ("failed", "completed"), 10, "both runs to finish in memory")
    held.release()

    assert b.wait(30) == "completed"
    assert b.result("count") == 50
    assert len(of_type(check_log(b), "step_progress")) == 50

    assert a.wait(30) == "failed"
    events = check_log(a)  # typed, gap-free, replays to the stored snapshot
    said = of_type(events, "agent_message")[0]["data"]
    assert (said["message"], said["agent"]) == ("lone \\ud800 surrogate", "eng\\udcff")
    files = of_type(events, "file_created", "file_updated")
    assert [(e["event_type"], e["data"]["path"], e["data"]["size"]) for e in files] == [
        ("file_created", escaped_path, 4), ("file_updated", escaped_path, 4)]
    assert files[0]["data"]["description"] == "named with bytes"
    tool = of_type(events, "agent_tool_call")[0]["data"]
    assert tool["arguments"] == {"dir": "caf\\udce9"}
    assert tool["result"] == ["caf\\udce9.txt", {"k\\udc80": 1}]
    assert of_type(events, "step_progress")[0]["data"]["message"] == "\\udce9"
    nodes = {n["id"]: n for n in a.snapshot()["nodes"]}
    assert nodes["talk"]["status"] == "completed"
    assert nodes["talk"]["result_preview"] == "<odd \\udcff>"
    assert isinstance(a.result("talk"), OddRepr)  # the value itself is untouched
    error = nodes["crash"]["error"]
    assert (error["type"], error["message"]) == ("ValueError", "cannot open caf\\udce9.txt")
    assert 'raise ValueError("cannot open caf\\udce9.txt")' in error["traceback"]


def finished(store, name: str):
    wf = Workflow(name)

    @wf.step()
    def only():
        return 1

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed"
    return run


def test_a_commit_the_store_cannot_write_is_refused_alone(store):
    """Whatever still reaches the journal unwritable fails its own run's commit only."""
    x, y = finished(store, "x"), finished(store, "y")
    x_last, y_last = store.bounds(x.id)[1], store.bounds(y.id)[1]
    held = HeldJournal(store, y.id)
    bad = Commit(x.id, [new_event(x.id, x_last + 1, "error_occurred",
                                  {"code": "test", "message": "\ud800"})])
    good = Commit(y.id, [new_event(y.id, y_last + 1, "error_occurred",
                                   {"code": "test", "message": "fine"})])
    bad.future, good.future = Future(), Future()
    journal(store).submit(bad)
    journal(store).submit(good)
    held.release()
    assert good.future.result(10) is None
    with pytest.raises(TypeError, match="surrogates"):
        bad.future.result(10)
    assert store.bounds(y.id)[1] == y_last + 1
    assert store.bounds(x.id)[1] == x_last
    assert x.id in journal(store).refused and y.id not in journal(store).refused


def test_definitions_and_prompts_the_store_cannot_hold_are_refused_in_the_step(store):
    refused: list[str] = []
    wf = Workflow("refusals")

    @wf.step()
    def plan(ctx):
        for call in (lambda: ctx.add_step(lambda: 1, name="bad\ud800"),
                     lambda: ctx.add_step(lambda: 1, name="nul\x00"),  # the edges table is text
                     lambda: ctx.add_step(lambda: 1, name="fine", description="\udcff"),
                     lambda: ctx.approve("yes\x00no?")):  # so is the approvals table
            try:
                call()
            except ValueError as exc:  # WorkflowDefinitionError is a ValueError
                refused.append(str(exc))
        return len(refused)

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed" and run.result("plan") == 4, refused
    assert "ctx.add_step: step 'bad\\\\ud800': names, labels and descriptions" in refused[0]
    assert refused[3] == "ctx.approve: the prompt contains a NUL character"
    events = check_log(run)
    assert not of_type(events, "dag_updated", "approval_requested")
