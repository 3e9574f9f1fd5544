"""Two processes, one SQLite file: control across processes, a killed executor, and
concurrent writers."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

import engine
from engine import ExecutorLost, Workflow
from engine_support import (
    REMOTE_RUN,
    Script,
    check_log,
    node_path,
    of_type,
    run_script,
    statuses,
    wait_node,
    wait_state,
    wait_until,
    workflow_path,
)

# One control call on a run, from this other process: argv = store, run id, action,
# then optional JSON keyword arguments. Prints the ack, or the error's class and code.
CONTROL = """
from engine import EngineError

run = store.run(sys.argv[2])
kwargs = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
try:
    print(json.dumps({"ack": getattr(run, sys.argv[3])(**kwargs)}))
except EngineError as exc:
    print(json.dumps({"error": type(exc).__name__, "code": exc.code, "message": str(exc)}))
"""


def control(tmp_path, db_url, run_id, action, **kwargs) -> dict:
    """Send one command from a second process; return what it printed."""
    args = [db_url, run_id, action] + ([json.dumps(kwargs)] if kwargs else [])
    return json.loads(run_script(tmp_path, f"control_{action}", CONTROL, *args))


def test_pause_and_resume_from_another_process(store, db_url, tmp_path):
    """The run executes in process A; this process pauses and resumes it."""
    remote = Script(tmp_path, "remote_run", REMOTE_RUN).start(db_url, tmp_path)
    try:
        run = store.run(remote.wait_for_file(tmp_path / "run_id"))
        wait_node(run, "long", "running", timeout=30)

        acks = []
        pauser = threading.Thread(target=lambda: acks.append(run.pause()))
        t0 = time.perf_counter()
        pauser.start()
        wait_until(lambda: run.state in ("pausing", "paused"), 5, "pausing", interval=0.001)
        seen = time.perf_counter() - t0
        wait_state(run, "paused")
        paused = time.perf_counter() - t0
        pauser.join(10)
        print(f"\ncross-process pause: pausing visible after {seen * 1000:.1f} ms, "
              f"paused after {paused * 1000:.1f} ms")
        assert seen < 1.0
        assert acks and acks[0]["ok"]

        assert statuses(run) == {"long": "paused", "after": "pending"}  # waiting at its checkpoint
        events = run.events().dicts()
        assert workflow_path(events)[-3:] == ["executing", "pausing", "paused"]
        to_pausing = next(e for e in events if e["data"].get("new_state") == "pausing")
        assert to_pausing["data"]["command_id"] == acks[0]["command_id"]
        assert node_path(events, "long") == ["pending", "running", "paused"]

        assert run.resume()["state"] == "executing"
        wait_node(run, "long", "running")
        (tmp_path / "go").touch()
        assert remote.check(30).splitlines() == ["completed", "long done + after"]
        events = check_log(run)
        assert workflow_path(events) == ["draft", "planning", "executing", "pausing", "paused",
                                         "executing", "completed"]
        assert of_type(events, "workflow_resumed")
    finally:
        remote.stop()


def looping(gate: threading.Event, name="local") -> Workflow:
    wf = Workflow(name)

    @wf.step()
    def long(ctx):
        while not gate.is_set():
            ctx.checkpoint()
            time.sleep(0.002)
        return 1

    @wf.step(deps=["long"])
    def after(long):
        return long + 1

    return wf


def test_pause_and_resume_sent_by_another_process(store, db_url, tmp_path):
    """The run executes here; another process pauses and resumes it."""
    gate = threading.Event()
    run = looping(gate).start(store=store)
    wait_node(run, "long", "running")

    out = control(tmp_path, db_url, run.id, "pause")
    assert out["ack"]["ok"] and out["ack"]["state"] in ("pausing", "paused")
    wait_state(run, "paused")
    assert statuses(run) == {"long": "paused", "after": "pending"}

    out = control(tmp_path, db_url, run.id, "resume")
    assert out["ack"]["state"] == "executing"
    wait_node(run, "long", "running")
    gate.set()
    assert run.wait(10) == "completed"
    assert workflow_path(check_log(run))[-4:] == ["pausing", "paused", "executing", "completed"]


def approval_run(store, ready: threading.Event):
    wf = Workflow("needs a human")
    answers = {}

    @wf.step()
    def fit(ctx):
        ready.wait(10)
        answers["fit"] = ctx.approve("Use this fit?")
        return "kept" if answers["fit"] else "discarded"

    return wf.start(store=store), answers


def test_approval_answered_from_another_process(store, db_url, tmp_path):
    ready = threading.Event()
    run, answers = approval_run(store, ready)
    wait_node(run, "fit", "running")
    # Nothing is pending yet: approving (with the node omitted) is refused, and says why.
    out = control(tmp_path, db_url, run.id, "approve")
    assert out["code"] == "no_pending_approval" and "no approval is pending" in out["message"]
    assert out["error"] == "CommandRejected"

    ready.set()
    wait_state(run, "waiting_approval")
    out = control(tmp_path, db_url, run.id, "approve", comment="looks right to me")
    assert out["ack"]["ok"]
    assert run.wait(10) == "completed"
    assert answers == {"fit": True} and run.result("fit") == "kept"
    events = check_log(run)
    [received] = of_type(events, "approval_received")
    assert received["data"]["approved"] is True
    assert received["data"]["comment"] == "looks right to me"
    assert received["data"]["command_id"] == out["ack"]["command_id"]
    [requested] = of_type(events, "approval_requested")
    assert requested["data"]["prompt"] == "Use this fit?"
    assert requested["data"]["approval_id"] == received["data"]["approval_id"]


def test_rejection_from_another_process(store, db_url, tmp_path):
    ready = threading.Event()
    ready.set()
    run, answers = approval_run(store, ready)
    wait_state(run, "waiting_approval")
    out = control(tmp_path, db_url, run.id, "reject", node_id="fit", comment="too noisy")
    assert out["ack"]["ok"]
    assert run.wait(10) == "completed"
    assert answers == {"fit": False} and run.result("fit") == "discarded"
    [received] = of_type(check_log(run), "approval_received")
    assert (received["data"]["approved"], received["data"]["comment"]) == (False, "too noisy")


# -- a killed executor ----------------------------------------------------------------------------

DOOMED = """
workdir = Path(sys.argv[2])
wf = Workflow("doomed")

@wf.step()
def warmup():
    return 1

@wf.step(deps=["warmup"])
def work(ctx, warmup):
    i = 0
    while True:
        i += 1
        ctx.progress(None, f"tick {i}")
        ctx.checkpoint()
        time.sleep(0.002)

@wf.step(deps=["work"])
def never(work):
    return work

run = wf.start(store=store)
publish(workdir / "run_id", run.id)
run.wait()
"""


def start_and_kill(store, db_url, tmp_path):
    """Start DOOMED in another process, let it commit some progress, kill -9 it."""
    doomed = Script(tmp_path, "doomed", DOOMED).start(db_url, tmp_path)
    try:
        run = store.run(doomed.wait_for_file(tmp_path / "run_id"))
        wait_until(lambda: store.bounds(run.id)[1] >= 40, 30, "40 events")
        before = run.events().dicts()
    finally:
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait(10)
    assert doomed.proc.returncode == -signal.SIGKILL
    return run, before


def assert_lost(run, before):
    """What was committed before the crash is intact and the run says why it stopped."""
    events = check_log(run)  # gap-free, typed, replay == snapshot
    assert events[:len(before)] == before
    snap = run.snapshot()
    assert snap["run"]["state"] == "failed" and snap["run"]["reason"] == "executor_lost"
    assert statuses(run) == {"warmup": "completed", "work": "failed", "never": "skipped"}
    work = next(n for n in snap["nodes"] if n["id"] == "work")
    assert work["error"]["type"] == "executor_lost"
    assert work["progress_message"] == of_type(events, "step_progress")[-1]["data"]["message"]
    failed = of_type(events, "workflow_failed")[-1]["data"]
    assert failed["reason"] == "executor_lost" and failed["failed_nodes"] == ["work"]
    return events


def test_killed_executor_is_detected_when_the_store_is_opened(store, db_url, tmp_path):
    run, before = start_and_kill(store, db_url, tmp_path)
    t0 = time.monotonic()
    # a new store object (different options make a different one)
    other = {"busy_timeout_s": 30.0} if db_url.startswith("sqlite") else {"pool_size": 2}
    reopened = engine.open_store(db_url, **other)
    try:
        assert reopened is not store
        wait_until(lambda: reopened.reap() is not None and reopened.run(run.id).state == "failed",
                   30, "the run to be marked failed")
        print(f"\nkilled executor marked lost after {time.monotonic() - t0:.3f} s")
        assert_lost(reopened.run(run.id), before)
        # A command that needs the executor is refused, saying it is gone.
        with pytest.raises(ExecutorLost, match="executor_lost") as info:
            reopened.run(run.id).retry("work")
        assert info.value.code == "executor_lost"
        ack = reopened.submit_command(run.id, "retry", "work")
        assert (ack["ok"], ack["code"]) == (False, "executor_lost")
    finally:
        reopened.close()


def test_command_to_a_killed_executor_is_refused_and_marks_the_run(store, db_url, tmp_path):
    run, before = start_and_kill(store, db_url, tmp_path)
    assert run.state == "executing"  # nothing has noticed yet
    with pytest.raises(ExecutorLost) as info:
        run.pause()
    assert info.value.code == "executor_lost"
    assert "gone" in str(info.value)
    assert run.state == "failed"
    assert_lost(run, before)


# -- concurrent writers -----------------------------------------------------------------------------

CHATTY = """
workdir, label = Path(sys.argv[2]), sys.argv[3]
n_runs, n_progress = int(sys.argv[4]), int(sys.argv[5])


def chatty(ctx):
    for i in range(n_progress):
        ctx.progress((i + 1) / n_progress, f"{i}")
    return n_progress


def build(k):
    wf = Workflow(f"{label}-{k}")
    for j in range(3):
        wf.step(f"s{j}")(chatty)
    wf.step("total", deps=["s0", "s1", "s2"])(lambda s0, s1, s2: s0 + s1 + s2)
    return wf


publish(workdir / f"{label}.ready", "")
while not (workdir / "go").exists():
    time.sleep(0.002)
runs = [build(k).start(store=store) for k in range(n_runs)]
print(json.dumps({"runs": [r.id for r in runs], "states": [r.wait(120).value for r in runs]}))
"""

N_PROGRESS = 1000


def test_concurrent_runs_in_threads_and_processes_share_one_file(store, db_url, tmp_path):
    procs = [Script(tmp_path, f"chatty_{p}", CHATTY).start(db_url, tmp_path, f"p{p}", 2, N_PROGRESS)
             for p in range(2)]
    try:
        for p, proc in enumerate(procs):
            proc.wait_for_file(tmp_path / f"p{p}.ready")
        (tmp_path / "go").touch()

        def chatty(ctx):
            for i in range(N_PROGRESS):
                ctx.progress((i + 1) / N_PROGRESS, f"{i}")
            return N_PROGRESS

        local, errors = [], []

        def one(k):
            try:
                wf = Workflow(f"thread-{k}")
                for j in range(3):
                    wf.step(f"s{j}")(chatty)
                wf.step("total", deps=["s0", "s1", "s2"])(lambda s0, s1, s2: s0 + s1 + s2)
                local.append(wf.run(store=store, timeout=120))
            except Exception as exc:  # reported below, with the others
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        outputs = [json.loads(proc.check(120)) for proc in procs]
        for t in threads:
            t.join(120)
    finally:
        for proc in procs:
            proc.stop()

    assert not errors, errors
    for proc in procs:
        assert "locked" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    remote_ids = [rid for out in outputs for rid in out["runs"]]
    assert all(s == "completed" for out in outputs for s in out["states"])
    runs = local + [store.run(rid) for rid in remote_ids]
    assert len(runs) == 8 and len({r["id"] for r in store.runs()}) == 8
    for run in runs:
        assert run.state == "completed", run.snapshot()["run"]
        assert run.snapshot()["run"]["last_error"] is None
        events = check_log(run)
        assert len(of_type(events, "step_progress")) == 3 * N_PROGRESS
    assert [r.result("total") for r in local] == [3 * N_PROGRESS] * 4


# -- a process that exits normally ---------------------------------------------------------------

EXITING = """
wf = Workflow("left behind")

@wf.step()
def slow(ctx):
    time.sleep(0.3)
    return 1

@wf.step(deps=["slow"])
def next_one(slow):
    return slow

failing = Workflow("failed before exit")

@failing.step()
def boom():
    raise RuntimeError("boom")

failed = failing.run(store=store, timeout=30)
run = wf.start(store=store)
while run.info()["counts"]["running"] == 0:
    time.sleep(0.002)
print(json.dumps({"unfinished": run.id, "failed": failed.id}))
"""  # ... and the interpreter exits with `slow` still running


def test_a_process_exiting_marks_its_unfinished_runs_lost(store, db_url, tmp_path):
    out = json.loads(run_script(tmp_path, "exiting", EXITING, db_url))
    unfinished, failed = store.run(out["unfinished"]), store.run(out["failed"])
    # Recorded by the exiting process itself: no reaping needed.
    assert unfinished.state == "failed"
    snap = unfinished.snapshot()
    assert snap["run"]["reason"] == "executor_lost"
    assert {n["id"]: n["status"] for n in snap["nodes"]}["next_one"] in ("skipped", "failed")
    check_log(unfinished)
    # The failed run's executor (needed for a retry) is gone too, and it says so, once:
    # refusing commands later does not record the same fact again.
    for _ in range(2):
        with pytest.raises(ExecutorLost):
            failed.retry("boom")
    [lost] = of_type(check_log(failed), "error_occurred")
    assert lost["data"]["code"] == "executor_lost"
    run_doc = failed.snapshot()["run"]
    assert run_doc["reason"] == "step_failed"  # the real failure is not hidden...
    assert run_doc["last_error"]["code"] == "executor_lost"  # ...by the later loss


EXITING_AT_CHECKPOINT = """
wf = Workflow("forever")

@wf.step()
def forever(ctx):
    while True:
        ctx.checkpoint()
        time.sleep(0.01)

run = wf.start(store=store)
while run.info()["counts"]["running"] == 0:
    time.sleep(0.002)
print(json.dumps({"run": run.id}))
"""  # the script ends; the step would loop for ever


def test_a_script_ending_mid_step_exits_and_records_the_loss(store, db_url, tmp_path):
    """The step is released at its checkpoint: the process does not hang at exit."""
    out = json.loads(run_script(tmp_path, "at_checkpoint", EXITING_AT_CHECKPOINT, db_url,
                                timeout=20))
    run = store.run(out["run"])
    assert run.state == "failed"
    assert run.snapshot()["run"]["reason"] == "executor_lost"
    check_log(run)
