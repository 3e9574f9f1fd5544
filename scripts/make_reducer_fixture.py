"""Record a run that exercises every kind of event, for the reducer cross-check.

Writes labextension/test/fixtures/run-log.json: {"events": [...], "snapshot": {...}}.
The TypeScript reducer (labextension/src/state.ts) replays the events and must reach
the snapshot; tests/engine/test_reducer_fixture.py checks Python's reducer the same way.

    python scripts/make_reducer_fixture.py
"""

import json
import tempfile
import time
from pathlib import Path

from engine import Workflow, open_store

OUT = Path(__file__).resolve().parent.parent / "labextension" / "test" / "fixtures" / "run-log.json"


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    store = open_store(str(tmp / "fixture.sqlite"))
    wf = Workflow("fixture", description="every event type once or more")
    attempts = {"flaky": 0}
    broken = {"yes": True}

    @wf.step()
    def plan(ctx):
        ctx.message("Plan: two fits and a report.", agent="planner")
        ctx.thinking("Two models should be enough.", agent="planner")
        ctx.tool_call("search", {"q": "planck 2018"}, result={"hits": 3}, agent="planner")
        ctx.cost(model="m", input_tokens=120, output_tokens=30, usd=0.0012)

        def extra(ctx, plan):
            ctx.progress(1.0, "done")
            return "extra"

        ctx.add_step(extra, deps=["plan"], name="extra")
        return ["a", "b"]

    @wf.step(deps=["plan"], retries=1, retry_delay=0.01)
    def flaky(ctx, plan):
        attempts["flaky"] += 1
        ctx.progress(0.5, "working")
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
        ctx.cost(model="m", input_tokens=50, output_tokens=70, usd=0.002)
        return ok

    run = wf.start(store=store)
    wait_for(lambda: run.state == "failed")
    broken["yes"] = False
    run.retry("fragile")
    wait_for(lambda: run.state == "waiting_approval")
    run.pause()
    wait_for(lambda: run.state == "paused")
    run.approve(comment="looks good")
    run.resume()
    run.wait(30)
    OUT.write_text(json.dumps({"events": run.events().dicts(), "snapshot": run.snapshot()}, indent=1))
    print(f"wrote {OUT}: {len(run.events())} events, final state {run.state.value}")


if __name__ == "__main__":
    main()
