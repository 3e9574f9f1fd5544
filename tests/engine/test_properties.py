"""Property: whatever the DAG, the step outcomes and the commands sent while it runs,
the log is gap-free, typed, one event per transition, and replays to the snapshot."""

from __future__ import annotations

import time
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import CommandRejected, Workflow
from engine_support import SETTLED, check_log, shutdown_executors, wait_until, workflow_path

#: fail_once fails its first attempt (a retry command then succeeds), broken always fails,
#: flaky fails once and is retried automatically, approve asks a human.
OUTCOMES = ("ok", "ok", "fail_once", "broken", "flaky", "approve")
ACTIONS = ("pause", "resume", "cancel", "approve", "reject", "retry")


@st.composite
def scenarios(draw):
    n = draw(st.integers(3, 8))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 3)))) if i else []
            for i in range(n)]
    outcomes = draw(st.lists(st.sampled_from(OUTCOMES), min_size=n, max_size=n))
    work = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))  # checkpoints per step
    commands = draw(st.lists(
        st.tuples(st.sampled_from(ACTIONS), st.integers(0, n - 1), st.booleans(), st.integers(0, 15)),
        max_size=6))
    return deps, outcomes, work, commands


def build(deps, outcomes, work) -> Workflow:
    wf = Workflow("random")

    def make(i):
        def fn(ctx):
            for _ in range(work[i]):
                ctx.checkpoint()
                ctx.progress(None, "working")
                time.sleep(0.002)
            if outcomes[i] == "broken":
                raise ValueError(f"n{i} is broken")
            if outcomes[i] in ("fail_once", "flaky") and ctx.attempt == 1:
                raise ValueError(f"n{i} fails once")
            if outcomes[i] == "approve":
                return ctx.approve(f"n{i}?")
            return i
        return fn

    for i, ds in enumerate(deps):
        wf.step(f"n{i}", deps=[f"n{d}" for d in ds], retries=1 if outcomes[i] == "flaky" else 0,
                retry_delay=0.01)(make(i))
    return wf


class Commander:
    """Sends commands to a run and remembers which were applied and which refused."""

    def __init__(self, run):
        self.run = run
        self.applied: list[str] = []
        self.refused: list[str] = []

    def send(self, action, node=None) -> None:
        cid = uuid.uuid4().hex
        try:
            self.run.command(action, node, command_id=cid, timeout=15)
        except CommandRejected:
            self.refused.append(cid)  # not legal at that moment
        else:
            self.applied.append(cid)

    def drive_to_rest(self, budget: float = 3.0) -> None:
        """Answer approvals and resume pauses for a while; then cancel. The run must settle."""
        run = self.run
        deadline = time.monotonic() + budget
        while run.state.value not in SETTLED and time.monotonic() < deadline:
            info = run.info()
            if info["state"] in ("pausing", "paused"):
                self.send("resume")
            elif info["pending_approvals"]:
                self.send("approve", info["pending_approvals"][0]["node_id"])
            time.sleep(0.005)
        if run.state.value not in SETTLED:
            self.send("cancel")
        wait_until(lambda: run.state.value in SETTLED, 10, "the run to settle",
                   context=lambda: run.snapshot()["run"])


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=scenarios())
def test_random_runs_keep_the_log_consistent(store, scenario):
    deps, outcomes, work, commands = scenario
    run = build(deps, outcomes, work).start(store=store)
    commander = Commander(run)
    try:
        for action, idx, name_node, pause_ms in commands:
            time.sleep(pause_ms / 1000)
            if action == "retry":  # mostly a node that fails, so that some retries are legal
                failing = [i for i, o in enumerate(outcomes) if o in ("fail_once", "broken")] or [idx]
                idx = failing[idx % len(failing)]
            node = f"n{idx}" if action == "retry" or (action in ("approve", "reject") and name_node) else None
            commander.send(action, node)
        commander.drive_to_rest()

        events = check_log(run)
        snap = run.snapshot()
        r = snap["run"]
        assert workflow_path(events)[-1] == r["state"]
        assert sum(r["counts"].values()) == r["total"] == len(deps)
        status = [n["status"] for n in snap["nodes"]]
        assert not {"running", "paused", "waiting_approval", "pending", "retrying"} & set(status), status
        if r["state"] == "completed":
            assert set(status) == {"completed"}
        if r["state"] == "failed":
            assert "failed" in status
        assert r["pending_approvals"] == []
        # An applied command shows in the log (the events it caused name it), a refused one
        # left no trace, and none caused two workflow transitions.
        named = {e["data"]["command_id"] for e in events if e["data"].get("command_id")}
        assert set(commander.applied) <= named
        assert not set(commander.refused) & named
        caused = [e["data"]["command_id"] for e in events
                  if "old_state" in e["data"] and e["data"].get("command_id")]
        assert len(caused) == len(set(caused))
    finally:
        shutdown_executors(store)
