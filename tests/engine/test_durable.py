"""Durable work: results kept with completions, runs resumed by another process after
theirs died, stale steps re-run, re-run from a step, deleting runs. Both stores.

Every step appends its name to a counter file outside the store when it runs: that is
how "ran exactly once" is proven.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import CommandRejected, EngineError, Workflow, WorkflowDefinitionError
from engine.errors import RunBusy
from engine_support import TWENTY, Script, check_log, counts, load_module, ran, raw, wait_node
from support import wait_until

KILLED_RUN = """
sys.path.insert(0, sys.argv[2])
import twenty
run = twenty.build().start(store=store)
publish(Path(sys.argv[2]) / "run_id", run.id)
run.wait()
"""



def test_a_run_whose_process_was_killed_is_resumed_and_nothing_is_done_twice(store, db_url, work):
    (work / "twenty.py").write_text(TWENTY)
    first = Script(work, "killed", KILLED_RUN).start(db_url, work)
    try:
        run_id = first.wait_for_file(work / "run_id")
        first.wait_for_file(work / "s10_started")
    finally:
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
    before = counts(work)
    assert before == {f"s{i}": 1 for i in range(11)}

    (work / "go").touch()
    twenty = load_module(work / "twenty.py", "twenty")
    run = twenty.build().resume(run_id, store)
    assert run.wait(30) == "completed"
    # Every step ran exactly once in all, except s10, interrupted by the kill.
    assert counts(work) == {**{f"s{i}": 1 for i in range(20)}, "s10": 2}
    reopened = [e for e in run.events() if e.event_type == "run_reopened"]
    assert len(reopened) == 1 and reopened[0].data.pid == os.getpid()
    assert set(reopened[0].data.rerun) == {f"s{i}" for i in range(10, 20)}
    # The results are those of an uninterrupted run, and any process can read them.
    clean = twenty.build().run(store, timeout=30)
    other = Script(work, "reader", """
run = store.run(sys.argv[2])
print(json.dumps([run.result(f"s{i}") for i in range(20)]))
""").start(db_url, run_id).check()
    import json

    assert json.loads(other) == [clean.result(f"s{i}") for i in range(20)]
    check_log(run)


def test_a_steps_code_starts_only_once_its_inputs_are_on_record(store, db_url):
    """Each link of a quick chain reads, through another connection, what its dependency
    left: the completion and the result are committed before the dependent's code runs
    (a process killed at any moment never ran a step on inputs it must compute again)."""
    other = engine.open_store(db_url)
    seen: list[tuple] = []
    wf = Workflow("causal")

    def link(i):
        def body(ctx, **upstream):
            for dep in upstream:
                node = other.load_view(ctx.run_id).nodes[dep]
                seen.append((dep, node["status"], other.load_result(ctx.run_id, dep)))
            return i
        return body

    for i in range(30):
        wf.step(f"l{i}", deps=[f"l{i - 1}"] if i else [])(link(i))
    try:
        run = wf.start(store=store)
        assert run.wait(60) == "completed", run.state
    finally:
        other.close()
    assert seen == [(f"l{i}", "completed", i) for i in range(29)]


def test_an_edited_step_runs_again_with_exactly_what_is_downstream_of_it(store, work):
    """a -> b -> c, a -> d, a -> e. The run fails at e; b is edited, e fixed: resume runs
    b, c (downstream of b) and e (failed); a and d keep their results."""
    source = '''
import os
from pathlib import Path
from engine import Workflow

WORK = Path(os.environ["DURABLE_WORK"])


def count(name):
    with open(WORK / "counts", "a") as f:
        f.write(name + "\\n")


def build():
    wf = Workflow("edited")

    @wf.step()
    def a():
        count("a")
        return 1

    @wf.step(deps=["a"])
    def b(a):
        count("b")
        return a + B_OFFSET

    @wf.step(deps=["b"])
    def c(b):
        count("c")
        return b * 10

    @wf.step(deps=["a"])
    def d(a):
        count("d")
        return a - 1

    @wf.step(deps=["a"])
    def e(a):
        count("e")
        if FAIL:
            raise RuntimeError("e is broken")
        return "e"

    return wf
'''
    path = work / "edited.py"
    path.write_text(source.replace("B_OFFSET", "1").replace("FAIL", "True"))
    run = load_module(path, "edited_v1").build().run(store, timeout=30)
    assert run.state == "failed"
    path.write_text(source.replace("B_OFFSET", "100").replace("FAIL", "False"))
    resumed = load_module(path, "edited_v2").build().resume(run.id, store)
    assert resumed.wait(30) == "completed"
    assert counts(work) == {"a": 1, "b": 2, "c": 2, "d": 1, "e": 2}
    assert [resumed.result(n) for n in "abcde"] == [1, 101, 1010, 0, "e"]
    why = [e for e in resumed.events() if e.event_type == "run_reopened"][0].data.rerun
    assert why == {"b": "its code changed", "c": "b runs again", "e": "it was failed"}


def test_results_are_kept_inline_in_files_or_not_at_all_and_say_so(tmp_path):
    url = str(tmp_path / "runs.sqlite")
    store = engine.open_store(url, result_inline_max=4096)
    wf = Workflow("kinds of results")

    class Local:  # defined here, pickled by cloudpickle
        def __init__(self, v):
            self.v = v

    @wf.step()
    def small():
        return {"a": [1, 2, 3]}

    @wf.step()
    def big():
        return np.arange(100_000, dtype=np.float64)

    @wf.step()
    def unpicklable():
        return threading.Lock()

    @wf.step(deps=["unpicklable"])
    def uses_it(unpicklable):  # the result stays in memory for the steps that need it
        return unpicklable.locked()

    @wf.step()
    def local():
        return Local(7)

    run = wf.run(store, timeout=30)
    assert run.state == "completed"
    nodes = {n["id"]: n for n in run.snapshot()["nodes"]}
    assert nodes["small"]["result"]["stored"] and nodes["small"]["result"]["codec"] == "pickle"
    assert nodes["local"]["result"]["codec"] == "cloudpickle"
    assert not nodes["unpicklable"]["result"]["stored"]
    assert "cannot be pickled" in nodes["unpicklable"]["result"]["error"]
    assert nodes["uses_it"]["status"] == "completed"
    files = list((tmp_path / "runs.results" / run.id).iterdir())
    assert len(files) == 1 and files[0].name.startswith("big.")
    engine.store.close_store(url)

    fresh = engine.open_store(url)  # another store object, reading from disk
    assert fresh.load_result(run.id, "small") == {"a": [1, 2, 3]}
    assert np.array_equal(fresh.load_result(run.id, "big"), np.arange(100_000, dtype=np.float64))
    assert fresh.load_result(run.id, "local").v == 7
    with pytest.raises(EngineError, match="was not stored .*cannot be pickled"):
        fresh.load_result(run.id, "unpicklable")
    fresh.delete_run(run.id)
    assert not (tmp_path / "runs.results" / run.id).exists()
    engine.store.close_store(url)


def test_large_results_go_to_an_fsspec_url(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    url = str(tmp_path / "runs.sqlite")
    store = engine.open_store(url, results_url="memory://cmbagent-test", result_inline_max=1000)
    wf = Workflow("to memory://")
    wf.step("big")(lambda: bytes(range(256)) * 100)
    run = wf.run(store, timeout=30)
    fs = fsspec.filesystem("memory")
    [path] = fs.ls(f"/cmbagent-test/{run.id}", detail=False)
    assert store.load_result(run.id, "big") == bytes(range(256)) * 100
    # Deleted through a store opened without results_url (as a server that names only the
    # database): the run's rows say where its files are.
    engine.open_store(url).delete_run(run.id)
    assert not fs.exists(path)
    engine.store.close_store(url)


def test_a_step_added_at_run_time_is_added_again_by_its_step(store, work):
    """plan adds x and y; x fails the first time. Resume runs plan again (x must run again,
    and only plan can give it its code), which adds x and y again (the same nodes)."""
    flag = work / "x_fails"
    flag.touch()
    wf = Workflow("planner")

    def x(ctx, plan):
        ran(work, "x")
        if flag.exists():
            raise RuntimeError("x fails once")
        return plan + ["x"]

    def y(ctx, plan):
        ran(work, "y")
        return plan + ["y"]

    @wf.step()
    def plan(ctx):
        ran(work, "plan")
        ctx.add_step(x, deps=["plan"])
        ctx.add_step(y, deps=["plan"])
        return ["plan"]

    @wf.step()
    def static():
        ran(work, "static")
        return "s"

    run = wf.run(store, timeout=30)
    assert run.state == "failed"
    flag.unlink()
    resumed = wf.resume(run.id, store)
    assert resumed.wait(30) == "completed"
    assert counts(work) == {"plan": 2, "x": 2, "y": 2, "static": 1}
    assert resumed.result("x") == ["plan", "x"]
    assert [n["id"] for n in resumed.snapshot()["nodes"]] == ["plan", "static", "x", "y"]
    assert resumed.snapshot()["nodes"][2]["added_by"] == "plan"
    check_log(resumed)


def test_resume_is_refused_clearly(store, work):
    go = threading.Event()
    wf = Workflow("refusals")

    @wf.step()
    def waits():
        go.wait(10)
        return 1

    live = wf.start(store)
    try:
        with pytest.raises(RunBusy, match=f"pid {os.getpid()} on "):
            wf.resume(live.id, store)
    finally:
        go.set()
    assert live.wait(10) == "completed"
    with pytest.raises(CommandRejected, match="nothing to resume"):
        wf.resume(live.id, store)
    assert live.rerun("waits")["ok"]  # still held here: the executor was left alone
    assert live.wait(10) == "completed"

    other = Workflow("refusals")
    other.step("waits")(lambda: 1)
    other.step("extra", deps=["waits"])(lambda waits: 2)
    with pytest.raises(WorkflowDefinitionError, match=r"defines step\(s\) \['extra'\] that the run does not have"):
        other.resume(live.id, store)
    renamed = Workflow("another name")
    renamed.step("waits")(lambda: 1)
    with pytest.raises(WorkflowDefinitionError, match="of workflow 'refusals', not 'another name'"):
        renamed.resume(live.id, store)


def test_a_completed_run_of_a_gone_process_is_resumed_only_with_something_to_do(store, db_url, work):
    (work / "twenty.py").write_text(TWENTY)
    (work / "go").touch()
    done = Script(work, "completes", KILLED_RUN).start(db_url, work)
    run_id = done.wait_for_file(work / "run_id")
    done.check()
    twenty = load_module(work / "twenty.py", "twenty_done")
    with pytest.raises(CommandRejected, match="completed and no step's code changed"):
        twenty.build().resume(run_id, store)
    run = twenty.build().resume(run_id, store, rerun=["s18"])
    assert run.wait(30) == "completed"
    assert counts(work)["s18"] == counts(work)["s19"] == 2 and counts(work)["s17"] == 1


def test_rerun_from_a_step_of_a_completed_run_applies_once(store, work):
    wf = Workflow("re-run")

    @wf.step()
    def a():
        ran(work, "a")
        return 1

    @wf.step(deps=["a"])
    def b(a):
        ran(work, "b")
        return a + 1

    @wf.step()
    def c():
        ran(work, "c")
        return 3

    run = wf.run(store, timeout=30)
    # The same command from two tabs: one command_id, applied once.
    acks = [store.submit_command(run.id, "rerun", "a", command_id="from-two-tabs") for _ in range(2)]
    assert acks[0] == acks[1] and acks[0]["ok"]
    engine.runtime.local_executor(run.id).wake()
    wait_until(lambda: store.command_status("from-two-tabs")["status"] == "applied", 10, "the re-run")
    assert run.wait(10) == "completed"
    assert counts(work) == {"a": 2, "b": 2, "c": 1}
    assert run.rerun("b")["ok"] and run.wait(10) == "completed"
    assert counts(work) == {"a": 2, "b": 3, "c": 1}
    with pytest.raises(CommandRejected, match="needs a node_id"):
        run.command("rerun")
    check_log(run)


def test_deleting_runs(store, db_url):
    go = threading.Event()
    wf = Workflow("to delete")
    wf.step("waits")(lambda: go.wait(10))
    run = wf.start(store)
    wait_node(run, "waits", "running")
    with pytest.raises(RunBusy, match="cancel it first"):
        store.delete_run(run.id)
    go.set()
    assert run.wait(10) == "completed"
    store.delete_run(run.id)
    assert run.id not in {r["id"] for r in store.runs()}
    for table, column in [("runs", "id"), ("nodes", "run_id"), ("results", "run_id"),
                          ("edges", "run_id"), ("commands", "run_id")]:
        assert raw(db_url, f"SELECT COUNT(*) FROM {table} WHERE {column} = '{run.id}'") == [(0,)]
    # Of its log, only a tombstone at seq 0 on SQLite (how tailers hear of the deletion).
    assert raw(db_url, f"SELECT COUNT(*) FROM events WHERE run_id = '{run.id}' AND seq > 0") == [(0,)]
    with pytest.raises(engine.UnknownRun):
        store.delete_run(run.id)


def test_cli_runs_rm_deletes_settled_runs_and_refuses_an_executing_one(store, db_url):
    import asyncio
    import io

    from cmbagent_jupyter import cli

    go = threading.Event()
    wf = Workflow("rm from the CLI")
    wf.step("waits")(lambda: go.wait(10))
    busy = wf.start(store)
    wait_node(busy, "waits", "running")
    finished = Workflow("finished")
    finished.step("only")(lambda: 1)
    finished_run = finished.run(store, timeout=30)
    out, err = io.StringIO(), io.StringIO()
    code = asyncio.run(cli.amain(["runs", "rm", finished_run.id, busy.id, "--store", db_url], out, err))
    assert code == 1
    assert out.getvalue() == f"deleted {finished_run.id}\n"
    assert "cancel it first" in err.getvalue()
    assert {r["id"] for r in store.runs()} == {busy.id}
    go.set()
    assert busy.wait(10) == "completed"


def test_retention_never_takes_what_a_resume_needs(tmp_path, work):
    """Events trimmed to 3 per run: the run still resumes, from its snapshot and results."""
    url = str(tmp_path / "trimmed.sqlite")
    store = engine.open_store(url, max_events_per_run=3)
    broken = work / "broken"
    broken.touch()
    wf = Workflow("trimmed")

    @wf.step()
    def a():
        ran(work, "a")
        return 20

    @wf.step(deps=["a"])
    def b(a):
        ran(work, "b")
        if broken.exists():
            raise RuntimeError("b is broken")
        return a + 1

    run = wf.run(store, timeout=30)
    assert run.state == "failed"
    assert store.trim() >= 0 and store.bounds(run.id)[0] > 1  # the start of the log is gone
    broken.unlink()
    resumed = wf.resume(run.id, store)
    assert resumed.wait(30) == "completed"
    assert counts(work) == {"a": 1, "b": 2}
    assert resumed.result("b") == 21
    engine.store.close_store(url)
