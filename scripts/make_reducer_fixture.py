"""Record runs that together exercise every event type, for the reducer cross-check.

Writes labextension/test/fixtures/run-log.json:
{"runs": [{"title": ..., "events": [...], "snapshot": {...}}, ...]}. The TypeScript
reducer (labextension/src/state.ts) replays each run's events and must reach its
snapshot, and a test there fails when an event type of the schema occurs in none of
them; tests/test_contracts.py checks Python's reducer the same way.

    python scripts/make_reducer_fixture.py
"""

import json
import tempfile
import time
from pathlib import Path

from engine import Workflow, open_store
from engine.store import close_store

OUT = Path(__file__).resolve().parent.parent / "labextension" / "test" / "fixtures" / "run-log.json"


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def completed_run(store, tmp: Path) -> str:
    """Planned, extended at run time, a step retried, a failed one retried by hand,
    paused while waiting for an approval, approved, resumed, completed."""
    wf = Workflow("fixture", description="retries, a plan extended at run time, an approval")
    attempts = {"flaky": 0}
    broken = {"yes": True}

    @wf.step()
    def plan(ctx):
        ctx.message("Plan: two fits and a report.", agent="planner")
        ctx.thinking("Two models should be enough.", agent="planner")
        ctx.tool_call("search", {"q": "planck 2018"}, result={"hits": 3}, agent="planner")
        ctx.cost(model="m", input_tokens=120, output_tokens=30, usd=0.0012, agent="planner")

        def extra(ctx, plan):
            ctx.progress(1.0, "done")
            return "extra"

        ctx.add_step(extra, deps=["plan"], name="extra")
        return ["a", "b"]

    @wf.step(deps=["plan"], retries=1, retry_delay=0.01)
    def flaky(ctx, plan):
        attempts["flaky"] += 1
        ctx.progress(0.5, "working")
        print(f"attempt {attempts['flaky']}")  # step_output
        if attempts["flaky"] == 1:
            raise RuntimeError("first attempt fails")
        ctx.metric("chi2", 1.25)
        ctx.metric("chi2", 1.5)
        path = tmp / "fit.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n")
        ctx.file(path, description="the fit")
        ctx.file(path)
        return 1.5

    @wf.step(deps=["plan"])
    def fragile(ctx, plan):
        if broken["yes"]:
            raise ValueError("bad input")
        return 2

    @wf.step(deps=["flaky", "fragile"])
    def report(ctx, flaky, fragile):
        ctx.checkpoint()
        ok = ctx.approve("Publish the report?")
        title = ctx.ask("Which title?", choices=["Draft", "Final"])
        ctx.cost(model="m", input_tokens=50, output_tokens=70, usd=0.002)
        return f"{title}: {ok.comment}"

    run = wf.start(store=store)
    wait_for(lambda: run.state == "failed")
    broken["yes"] = False
    run.retry("fragile")
    wait_for(lambda: run.state == "waiting_approval")
    run.pause()
    wait_for(lambda: run.state == "paused")
    run.approve(comment="looks good")
    run.resume()
    wait_for(lambda: run.snapshot()["run"]["pending_approvals"])
    run.answer("Final")
    run.wait(30)
    return run.id


def cancelled_run(store) -> str:
    """Cancelled while a step waits at a checkpoint and another has not started."""
    wf = Workflow("fixture cancelled", description="cancelled while running")

    @wf.step()
    def long(ctx):
        while True:
            ctx.checkpoint()
            time.sleep(0.01)

    @wf.step(deps=["long"])
    def after(ctx, long):
        return long

    run = wf.start(store=store)
    wait_for(lambda: run.snapshot()["nodes"][0]["status"] == "running")
    run.cancel()
    run.wait(30)
    return run.id


def lost_workflow(fixed: bool) -> Workflow:
    wf = Workflow("fixture lost", description="failed, then its executor went away")

    @wf.step()
    def load(ctx):
        return 1

    @wf.step(deps=["load"])
    def boom(ctx, load):
        if not fixed:
            raise RuntimeError("boom")
        return load + 1

    return wf


def lost_run(store) -> str:
    """Failed, then its executor went away (the store it ran on closed): a retry is
    no longer possible, which the run records as error_occurred. Resumed afterwards."""
    run = lost_workflow(fixed=False).start(store=store)
    wait_for(lambda: run.state == "failed")
    return run.id


def rerun_run(store) -> str:
    """Completed, then a step and what follows it run again (run.rerun)."""
    wf = Workflow("fixture rerun", description="completed, then re-run from a step")

    @wf.step()
    def first(ctx):
        return 1

    @wf.step(deps=["first"])
    def second(ctx, first):
        return first + 1

    run = wf.run(store=store, timeout=30)
    run.rerun("first")
    run.wait(30)
    return run.id


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    url = str(tmp / "fixture.sqlite")
    store = open_store(url)
    titles = {
        completed_run(store, tmp): "completed after a retry, a pause, an approval and a question",
        cancelled_run(store): "cancelled while running",
        rerun_run(store): "completed, then re-run from its first step",
    }
    lost = lost_run(store)
    titles[lost] = "failed, its executor lost, then resumed (wf.resume) with the step fixed"
    close_store(url)  # the lost run's executor goes with it
    store = open_store(url)
    lost_workflow(fixed=True).resume(lost, store).wait(30)
    runs = []
    for run_id, title in titles.items():
        run = store.run(run_id)
        runs.append({"title": title, "events": run.events().dicts(), "snapshot": run.snapshot()})
    OUT.write_text(json.dumps({"runs": runs}, indent=1))
    types = {e["event_type"] for r in runs for e in r["events"]}
    print(f"wrote {OUT}: {len(runs)} runs, {sum(len(r['events']) for r in runs)} events, "
          f"{len(types)} event types")


if __name__ == "__main__":
    main()
