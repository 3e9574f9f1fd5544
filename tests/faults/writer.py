"""A run that streams events from its own process into a store (the fault tests' writer).

    python writer.py STORE WORKDIR --events N --rate R      # exactly N events in the log
    python writer.py STORE WORKDIR --until-stop --rate R     # until WORKDIR/stop exists

STORE: a SQLite file's path or a store URL (``sqlite:///...``, ``postgresql://...``).

Two parallel steps (``alpha``, ``beta``) wait for WORKDIR/go, then emit step_progress,
agent_message and cost_update events at about R events/s together; ``summary``
depends on both. The steps pass a ``ctx.checkpoint()`` every few events, so the run
can be paused and resumed (from any process, through the store). The run id is
published in WORKDIR/run_id as soon as the run exists; at the end one JSON line
``{"run_id", "state", "events"}`` is printed. Every wait has a deadline, so a forgotten
writer ends by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from engine import Workflow, open_store
from engine.runtime import local_executor

GATE_TIMEOUT = 120.0  # seconds a step waits for the go file
MAX_SECONDS = 150.0  # --until-stop: emit no longer than this
CHUNK = 10  # events between pacing checks


class Pacer:
    """Shared by the emitting steps: at most ``rate`` events/s together, and the stop rule."""

    def __init__(self, rate: float, workdir: Path, until_stop: bool):
        self.rate, self.workdir, self.until_stop = rate, workdir, until_stop
        self.lock = threading.Lock()
        self.t0 = None
        self.emitted = 0

    def start(self) -> None:
        with self.lock:
            if self.t0 is None:
                self.t0 = time.monotonic()

    def wait_turn(self, n: int) -> bool:
        """Block until ``n`` more events fit the rate; False when the run should stop emitting."""
        while True:
            with self.lock:
                elapsed = time.monotonic() - self.t0
                if self.until_stop and elapsed > MAX_SECONDS:
                    return False
                if self.rate <= 0 or self.emitted + n <= self.rate * elapsed:
                    self.emitted += n
                    return True
            time.sleep(0.002)

    def stopped(self) -> bool:
        return self.until_stop and (self.workdir / "stop").exists()


def build(counts: dict, pacer: Pacer, gate: bool) -> Workflow:
    wf = Workflow("faults-stream", description="streams events for the fault tests")

    def emit(ctx, name: str) -> int:
        if gate:
            deadline = time.monotonic() + GATE_TIMEOUT
            while not (pacer.workdir / "go").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the test never created the go file")
                ctx.checkpoint()
                time.sleep(0.005)
        pacer.start()
        n = counts.get(name)  # None: until stopped
        i = 0
        while n is None or i < n:
            if n is None and pacer.stopped():
                break
            todo = CHUNK if n is None else min(CHUNK, n - i)
            ctx.checkpoint()  # waits here while the run is paused
            if not pacer.wait_turn(todo):
                break
            for _ in range(todo):
                i += 1
                if i % 50 == 0:
                    ctx.cost(model="fault-model", input_tokens=3, output_tokens=2, usd=0.0001)
                elif i % 7 == 0:
                    ctx.message(f"{name} says {i}", agent=name)
                else:
                    ctx.progress((i % 1000) / 1000, f"{name} {i}")
        return i

    @wf.step()
    def alpha(ctx):
        return emit(ctx, "alpha")

    @wf.step()
    def beta(ctx):
        return emit(ctx, "beta")

    @wf.step(deps=["alpha", "beta"])
    def summary(ctx, alpha, beta):
        ctx.metric("emitted", float(alpha + beta))
        return alpha + beta

    return wf


def overhead(workdir: Path) -> int:
    """Events of the same workflow with nothing emitted (state transitions etc.)."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = open_store(os.path.join(tmp, "calibrate.sqlite"))
        pacer = Pacer(0, workdir, False)
        run = build({"alpha": 0, "beta": 0}, pacer, gate=False).run(store=store, timeout=60)
        assert run.state == "completed", run.state
        n = len(run.events())
        # run() returns once the final state is durable, but the executor thread still
        # reads the store for a moment; closing the store under it can crash the process
        # (SIGSEGV in sqlite3), so wait for it to go idle first (a completed run stays
        # held, with no thread, until the store closes).
        ex = local_executor(run.id)
        deadline = time.monotonic() + 30
        while not (ex.idle or ex.stopped.is_set()):
            assert time.monotonic() < deadline, "the calibration executor did not go idle"
            time.sleep(0.005)
        store.close()
        return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--events", type=int, default=None, help="exact number of events in the log")
    ap.add_argument("--until-stop", action="store_true")
    ap.add_argument("--rate", type=float, default=1000.0, help="events/s; 0: as fast as possible")
    args = ap.parse_args()
    if (args.events is None) == (not args.until_stop):
        ap.error("give exactly one of --events and --until-stop")
    counts = {}
    if args.events is not None:
        n = args.events - overhead(args.workdir)
        if n < 0:
            ap.error("--events must be at least the workflow's own events")
        counts = {"alpha": n // 2, "beta": n - n // 2}
    store = open_store(args.store)
    pacer = Pacer(args.rate, args.workdir, args.until_stop)
    run = build(counts, pacer, gate=True).start(store=store)
    tmp = args.workdir / "run_id.tmp"
    tmp.write_text(run.id)
    os.replace(tmp, args.workdir / "run_id")
    state = run.wait(GATE_TIMEOUT + MAX_SECONDS + 60)
    print(json.dumps({"run_id": run.id, "state": str(state.value), "events": len(run.events())}),
          flush=True)
    return 0 if state == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
