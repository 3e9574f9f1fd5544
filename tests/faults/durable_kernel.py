"""A notebook kernel's stand-in for the durable-work replica tests: one run, in its own
process, on the store every process of the test opens.

    python durable_kernel.py STORE WORKDIR hold           # run to completion, then keep
                                                          # holding the run until WORKDIR/stop
    python durable_kernel.py STORE WORKDIR interrupted    # start a run; its step `wait` waits
                                                          # for WORKDIR/go (the test kills it)
    python durable_kernel.py STORE WORKDIR resume RUN_ID  # wf.resume(RUN_ID) here, to the end

The workflow ``replicated``: load -> big (a result above the store's inline size: a file
under its results_url) -> wait (waits for WORKDIR/go at its checkpoints) -> summary.
Every run of a step appends the step's name to WORKDIR/counts (outside the store). The
run id is published in WORKDIR/run_id; at the end one JSON line ``{"run_id", "state"}``
is printed. Every wait has a deadline, so a forgotten process ends by itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from engine import Workflow, open_store

DEADLINE_S = 300.0
BIG = 64 * 1024  # bytes in big's result


def ran(workdir: Path, step: str) -> None:
    with open(workdir / "counts", "a") as f:
        f.write(step + "\n")


def build(workdir: Path) -> Workflow:
    wf = Workflow("replicated", description="a run carried on by other processes and replicas")

    @wf.step()
    def load():
        ran(workdir, "load")
        return 3

    @wf.step(deps=["load"])
    def big(load):
        ran(workdir, "big")
        return bytes([load]) * BIG

    @wf.step(deps=["big"])
    def wait(ctx, big):
        ran(workdir, "wait")
        deadline = time.monotonic() + DEADLINE_S
        while not (workdir / "go").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never created the go file")
            ctx.checkpoint()
            time.sleep(0.01)
        return len(big)

    @wf.step(deps=["load", "wait"])
    def summary(ctx, load, wait):
        ran(workdir, "summary")
        ctx.metric("bytes", float(wait))
        return load + wait

    return wf


def hold_until(path: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def main() -> int:
    store_url, workdir, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    store = open_store(store_url)
    wf = build(workdir)
    if mode == "resume":
        run = wf.resume(sys.argv[4], store)
    else:
        run = wf.start(store=store)
        tmp = workdir / "run_id.tmp"
        tmp.write_text(run.id)
        os.replace(tmp, workdir / "run_id")
    state = run.wait(DEADLINE_S)
    if mode == "hold":  # like a kernel after the cell: the run stays held, re-runs are applied
        hold_until(workdir / "stop")
        state = run.state
    print(json.dumps({"run_id": run.id, "state": state.value}), flush=True)
    store.close()
    return 0 if state == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
