"""Leases and fault isolation: one run's lost lease stops that run only; settled runs
cost nothing while they wait for a retry; a lease is judged dead only when it is
(a dead process of this host and PID namespace, or an expiry seen and confirmed)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

import engine
from engine import ExecutorLost, Workflow
from engine.errors import LeaseLost, LogConflict
from engine.store import Commit
from engine.runtime import local_executor
from engine.store.leases import CONFIRM_S, SLOW_PASS_S, Lease, LeaseJudge, holder_gone
from engine_support import REMOTE_RUN, Script, check_log, raw, run_script, wait_node, wait_until

# -- one lost lease ------------------------------------------------------------------------------


def test_a_refused_commit_writes_nothing_and_says_why(store):
    """A commit from a process that no longer holds the run is LeaseLost; one that does
    not continue the log where it stands is a LogConflict. Neither leaves a gap."""
    wf = Workflow("refused")
    wf.step()(lambda: 1)
    run = wf.run(store, timeout=10)
    last = store.bounds(run.id)[1]
    stray = {"run_id": run.id, "seq": last + 2, "id": "x" * 32, "event_type": "step_progress",
             "timestamp": "2026-01-01T00:00:00.000000+00:00", "data": {"node_id": "<lambda>"}}
    [(_, conflict)] = store.apply_commits([Commit(run.id, events=[stray])])
    assert isinstance(conflict, LogConflict) and conflict.code == "log_conflict"
    assert f"log is at seq {last}, commit starts at {last + 2}" in str(conflict)
    ok = dict(stray, seq=last + 1)
    [(_, lost)] = store.apply_commits([Commit(run.id, events=[ok], lease_owner="someone else")])
    assert isinstance(lost, LeaseLost) and lost.code == "lease_lost"
    assert store.bounds(run.id)[1] == last  # nothing written, last_seq unmoved
    assert store.apply_commits([Commit(run.id, events=[ok])]) == []
    assert [e.seq for e in store.events(run.id)][-2:] == [last, last + 1]


def test_a_lost_lease_stops_its_run_and_no_other(store, db_url):
    """Another process takes run A's lease while A and B execute here: A's executor
    stops (LeaseLost) and writes nothing more; B, batched with A, completes."""
    go = threading.Event()
    a, b = Workflow("loses its lease"), Workflow("bystander")

    @a.step()
    def chatty(ctx):
        while True:  # records until its executor stops (Cancelled at the checkpoint)
            ctx.progress(message="still here")
            ctx.checkpoint()
            time.sleep(0.005)

    @b.step()
    def patient(ctx):
        while not go.is_set():
            ctx.progress(message="waiting")
            ctx.checkpoint()
            time.sleep(0.005)
        return "done"

    run_a, run_b = a.start(store), b.start(store)
    wait_node(run_a, "chatty", "running")
    wait_node(run_b, "patient", "running")
    raw(db_url, f"UPDATE runs SET lease_owner = 'another process' WHERE id = '{run_a.id}'")

    ex_a = local_executor(run_a.id)
    wait_until(ex_a.stopped.is_set, 10, "run A's executor to stop")
    assert ex_a._lost  # it stopped because it lost the lease, not for another reason
    last_a = store.bounds(run_a.id)[1]
    go.set()
    assert run_b.wait(10) == "completed"
    assert run_b.result("patient") == "done"
    check_log(run_b)
    assert store.bounds(run_a.id)[1] == last_a, "run A's executor wrote after losing its lease"
    assert run_a.state == "executing"  # what happened to A is for the lease's new holder to say


# -- settled runs ----------------------------------------------------------------------------------

FLAKY_ONCE = """
# Retry one failed run of the parent test from this process.
run = store.run(sys.argv[2])
print(run.retry("flaky")["state"])
"""


def test_failed_runs_hold_no_thread_and_no_cpu_yet_obey_a_retry(store, db_url, tmp_path):
    fixed = tmp_path / "fixed"
    wf = Workflow("fails until fixed")

    @wf.step()
    def flaky():
        if not fixed.exists():
            raise RuntimeError("not yet")
        return "fixed"

    @wf.step(deps=["flaky"])
    def after(flaky):
        return flaky + " and after"

    warm = Workflow("warm-up")  # the process-wide threads (journal, watcher) exist from here
    warm.step("only")(lambda: 1)
    warmed = warm.run(store=store, timeout=30)
    assert warmed.state == "completed"
    # A completed run stays held by this process (a re-run may come), with no thread.
    wait_until(lambda: local_executor(warmed.id).idle, 10, "the warm-up executor to go idle")
    before = threading.active_count()

    runs = [wf.run(store=store, timeout=30) for _ in range(20)]
    assert {r.state.value for r in runs} == {"failed"}
    wait_until(lambda: threading.active_count() <= before, 10,
               f"the threads to go back to {before}", context=lambda: sorted(
                   t.name for t in threading.enumerate()))
    cpu = time.process_time()
    time.sleep(3.0)
    cpu = time.process_time() - cpu
    print(f"\n20 failed runs: {threading.active_count()} threads (before them: {before}); "
          f"idle CPU {cpu * 1000:.0f} ms in 3 s")
    assert cpu < 0.06, f"{cpu:.3f} s of CPU in 3 s while 20 failed runs wait"

    # Each still obeys a retry: sent from this process, and from another one.
    fixed.touch()
    assert runs[0].retry("flaky")["ok"]
    assert runs[0].wait(10) == "completed"
    assert runs[0].result("after") == "fixed and after"
    out = run_script(tmp_path, "retry", FLAKY_ONCE, db_url, runs[1].id)
    assert out.split() == ["executing"]
    assert runs[1].wait(10) == "completed"
    for run in runs[:2]:
        check_log(run)
    assert runs[2].state == "failed"  # the others still wait, with their executors here
    assert local_executor(runs[2].id).idle


# -- judging leases -------------------------------------------------------------------------------


def forge_lease(db_url: str, run_id: str, **cols) -> None:
    sets = ", ".join(f"{k} = {v!r}" for k, v in cols.items())  # SQL literals, as Python writes them
    raw(db_url, f"UPDATE runs SET {sets} WHERE id = '{run_id}'")


def held_elsewhere(store, db_url: str, **lease) -> engine.Run:
    """A run executing in the store whose lease another process holds (as ``lease`` says)."""
    wf = Workflow("held elsewhere")

    @wf.step()
    def wait(ctx):
        while True:
            ctx.checkpoint()
            time.sleep(0.01)

    run = wf.start(store)
    wait_node(run, "wait", "running")
    forge_lease(db_url, run.id, lease_owner="another process", **lease)
    wait_until(local_executor(run.id).stopped.is_set, 10, "the local executor to give the run up")
    return run


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_command_to_a_run_whose_lease_only_looks_expired_gets_its_verdict(store, db_url):
    """Its holder (on another host) renews nothing: a command is refused (executor_lost)
    within seconds, once reaping passes have seen the expired lease stay unchanged."""
    run = held_elsewhere(store, db_url, lease_host="elsewhere", lease_expires=time.time() - 60.0)
    t0 = time.monotonic()
    with pytest.raises(ExecutorLost, match="gone"):
        run.pause()
    took = time.monotonic() - t0
    print(f"\nverdict on an expired lease after {took:.1f} s")
    assert CONFIRM_S <= took < 10
    assert run.state == "failed"
    assert run.snapshot()["run"]["reason"] == "executor_lost"
    check_log(run)


def test_a_dead_pid_counts_only_in_its_own_pid_namespace(store, db_url):
    me = Lease.mine()
    run = held_elsewhere(store, db_url, lease_host=me.host, lease_pid=dead_pid(),
                         lease_ns="pid:[1]", lease_expires=time.time() + 600)
    assert store.reap() == []  # that PID is another namespace's: nothing to say about it
    assert run.state == "executing"
    forge_lease(db_url, run.id, lease_ns=me.ns)
    assert store.reap() == [run.id]  # the same PID in this namespace: that process is gone
    assert run.snapshot()["run"]["reason"] == "executor_lost"


def test_a_live_run_in_another_pid_namespace_is_not_reaped(store, db_url, tmp_path):
    """Containers may share a host name: a run executing in another PID namespace under
    a PID that, here, belongs to no process, is alive all the same."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs unshare(1) and the right to make PID namespaces (root)")
    pid = dead_pid()  # the executor's PID in its namespace; no process has it here
    # In a new PID namespace (the same host name), the interpreter gets exactly that PID.
    launcher = ("unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
                f'echo {pid - 1} > /proc/sys/kernel/ns_last_pid; "$0" "$@"')
    remote = Script(tmp_path, "in_namespace", REMOTE_RUN).start(db_url, tmp_path, launcher=launcher)
    try:
        run = store.run(remote.wait_for_file(tmp_path / "run_id"))
        wait_node(run, "long", "running")
        [(lease_pid, lease_ns)] = raw(db_url, f"SELECT lease_pid, lease_ns FROM runs WHERE id = '{run.id}'")
        assert (lease_pid, lease_ns != Lease.mine().ns) == (pid, True)
        assert store.reap() == [] and engine.open_store(db_url).reap() == []
        assert run.pause()["ok"] and run.resume()["ok"]  # its executor answers: alive
        (tmp_path / "go").touch()
        assert remote.check().split("\n")[:2] == ["completed", "long done + after"]
    finally:
        remote.stop()
    assert run.snapshot()["run"]["reason"] != "executor_lost"
    check_log(run)


def row(run_id="r", owner="o", host="elsewhere", pid=1, ns=None, expires=100.0):
    return (run_id, owner, host, pid, ns, expires)


def test_an_expired_lease_is_dead_only_once_confirmed_unchanged():
    judge = LeaseJudge()
    assert judge.judge([row(expires=100.0)], db_now=99.0, round_trip=0.01) == []  # not expired
    assert judge.judge([row(expires=100.0)], db_now=101.0, round_trip=0.01) == []  # a suspect
    assert judge.judge([row(expires=100.0)], db_now=101.0 + CONFIRM_S - 0.1, round_trip=0.01) == []
    assert judge.judge([row(expires=100.0)], db_now=101.0 + CONFIRM_S, round_trip=0.01) == [
        ("r", "o", 100.0)]


def test_a_renewal_or_a_slow_pass_clears_the_suspicion():
    judge = LeaseJudge()
    judge.judge([row(expires=100.0)], db_now=101.0, round_trip=0.01)
    # renewed (queued behind a stall, it landed late): a new lease, not expired
    assert judge.judge([row(expires=112.0)], db_now=102.0, round_trip=0.01) == []
    assert judge.judge([row(expires=112.0)], db_now=113.0, round_trip=0.01) == []
    assert judge.judge([row(expires=112.0)], db_now=113.0 + CONFIRM_S, round_trip=SLOW_PASS_S + 1) == []
    # the slow pass saw a stalled database: suspicion starts over
    assert judge.judge([row(expires=112.0)], db_now=114.0 + CONFIRM_S, round_trip=0.01) == []
    assert judge.judge([row(expires=112.0)], db_now=114.0 + 2 * CONFIRM_S, round_trip=0.01) == [
        ("r", "o", 112.0)]


def test_a_gone_process_of_this_host_and_namespace_is_dead_at_once():
    me = Lease.mine()
    pid = dead_pid()
    assert holder_gone(None, None, None, None)  # nobody holds it
    assert holder_gone("o", me.host, pid, me.ns)
    assert not holder_gone("o", me.host, pid, "pid:[1]")  # another namespace: unknown
    assert not holder_gone("o", "elsewhere", pid, me.ns)  # another host: unknown
    assert not holder_gone("o", me.host, os.getpid(), me.ns)  # alive
    assert not holder_gone(me.owner, me.host, pid, me.ns)  # this process, whatever the PID says
    judge = LeaseJudge()
    assert judge.judge([row(host=me.host, pid=pid, ns=me.ns, expires=1e12)], db_now=0.0,
                       round_trip=60.0) == [("r", "o", 1e12)]


def test_a_host_whose_clock_is_ahead_reaps_no_live_run(pg_url, tmp_path, monkeypatch):
    """PostgreSQL serves several hosts: lease times are the database's, so a host whose
    clock runs a minute ahead does not take live runs for expired ones."""
    store = engine.open_store(pg_url)
    remote = Script(tmp_path, "remote", REMOTE_RUN).start(pg_url, tmp_path)
    try:
        run = store.run(remote.wait_for_file(tmp_path / "run_id"))
        wait_node(run, "long", "running")
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 60.0)
        for _ in range(2 + int(CONFIRM_S)):  # enough passes to confirm a lease really expired
            assert store.reap() == []
            time.sleep(1.0)
        assert engine.open_store(pg_url, pool_size=2).reap() == []
        monkeypatch.undo()
        (tmp_path / "go").touch()
        assert remote.check().split("\n")[0] == "completed"
    finally:
        remote.stop()
    check_log(run)


def test_closing_a_store_stops_this_processs_runs_on_it_and_records_them_lost(db_url):
    """The runtime hears a store close (Store.on_close): its executors here stop first,
    recording what they leave unfinished, then its journal writes that down."""
    store = engine.open_store(db_url)
    go = threading.Event()
    wf = Workflow("closed under it")

    @wf.step()
    def waits(ctx):
        while not go.is_set():
            ctx.checkpoint()
            time.sleep(0.01)

    run = wf.start(store)
    wait_until(lambda: run.info()["counts"]["running"] == 1, 10, "the step to start")
    ex = local_executor(run.id)
    store.close()
    go.set()
    assert ex.stopped.is_set()
    reopened = engine.open_store(db_url)
    assert reopened is not store
    doc = reopened.run_doc(run.id)
    assert (doc["state"], doc["reason"]) == ("failed", "executor_lost")
    node = reopened.snapshot(run.id)["nodes"][0]
    assert node["error"]["message"] == "the store was closed while the run was active"
    check_log(reopened.run(run.id))


def test_a_finished_run_goes_idle_at_once(store):
    """The step that finishes a run does so on its own thread; the run's main loop,
    busy reading commands at that moment, must not then sleep a renewal period
    before it goes idle (its thread ends; the lease stays, for a re-run, until the
    process exits, which then lets it go without waiting)."""
    wf = Workflow("quick")
    for i in range(20):
        wf.step(f"s{i}", deps=[f"s{i - 1}"] if i else [])(lambda: None)
    slow = []
    for _ in range(15):
        run = wf.start(store=store)
        assert run.wait(30) == "completed"
        started = time.monotonic()
        wait_until(lambda: local_executor(run.id).idle, 10, "the executor to go idle")
        slow += [time.monotonic() - started] if time.monotonic() - started > 0.5 else []
    assert not slow, f"runs kept their thread {slow} s after completing"
