"""Executor memory: RSS growth of the executing process over 1M ``ctx.progress`` events.

Each measurement runs in a fresh child process (so nothing else in the process
allocates): it opens a store in the temp dir, runs a small warm-up workflow of the
same shape, then samples its own RSS (psutil, every 10 ms) while a workflow of
``--steps`` parallel steps makes ``--events`` progress calls in total, until the
run's completion is durable and its executor has stopped.

Figures: peak RSS growth during the run, and the growth still held after it
(``gc.collect()`` first), both over the RSS just before the run. The baseline is the
same workflow in its own child process whose loop calls a no-op function instead of
``ctx.progress``.

An extra engine child at a quarter of the events (stderr only, not a figure) tells
growth that scales with the events (a leak) from a bounded high-water mark.

    python benchmarks/memory.py [--events 1000000] [--steps 4] [--no-scaling]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import threading
import time

import orjson

import _common
from _common import (bench_dir, emit, note, open_store, progress_workflow, rss_bytes, run_to_completion,
                     wait_stopped)

TARGET_MB = 20.0
MB = 1024 * 1024


def noop(fraction=None, message=None):
    return None


def child(kind: str, events: int, steps: int, directory: str) -> dict:
    """Run in the child process: measure one workflow, return the RSS figures (bytes)."""
    store = open_store(os.path.join(directory, f"memory-{kind}.sqlite"))
    call = noop if kind == "baseline" else None
    run = run_to_completion(progress_workflow(min(events, 4_000), steps, "warm-up", call=call), store)
    wait_stopped(run)
    gc.collect()
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    t = time.perf_counter()
    run = run_to_completion(progress_workflow(events, steps, f"memory-{kind}", call=call), store)
    wait_stopped(run)
    elapsed = time.perf_counter() - t
    done.set()
    sampler.join()
    peak[0] = max(peak[0], rss_bytes())
    gc.collect()
    after = rss_bytes()
    store.close()
    return {"before": before, "peak": peak[0], "after": after, "seconds": elapsed}


def measure(kind: str, args, directory: str, events: int = 0) -> dict:
    events = events or args.events
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", kind, "--events", str(events),
         "--steps", str(args.steps), "--dir", directory],
        check=True, stdout=subprocess.PIPE, text=True)
    result = orjson.loads(out.stdout.strip().splitlines()[-1])
    note(f"{kind}: RSS {result['before'] / MB:.1f} MB before, peak {result['peak'] / MB:.1f} MB,"
         f" {result['after'] / MB:.1f} MB after; {result['seconds']:.1f} s for {events} calls")
    return result


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=4, help="parallel steps sharing the events")
    p.add_argument("--no-scaling", dest="scaling", action="store_false",
                   help="skip the extra engine run at a quarter of the events (it tells a leak,"
                        " which grows with the events, from a high-water mark, which does not)")
    p.add_argument("--child", choices=("engine", "baseline"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = child(args.child, args.events, args.steps, args.dir)
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        return 0

    with bench_dir(args.dir) as d:
        base = measure("baseline", args, d)
        eng = measure("engine", args, d)
        if args.scaling:  # growth that does not scale with the event count is a high-water mark
            quarter = measure("engine", args, d, events=args.events // 4)
            note(f"engine peak growth: {(quarter['peak'] - quarter['before']) / MB:.1f} MB over "
                 f"{args.events // 4} events vs {(eng['peak'] - eng['before']) / MB:.1f} MB over "
                 f"{args.events}")
    label = (f"same workflow ({args.steps} parallel steps, {args.events} loop iterations) calling a "
             f"no-op function instead of ctx.progress, in its own process")
    for name, key in (("peak", "peak"), ("retained", "after")):
        value = (eng[key] - eng["before"]) / MB
        baseline = (base[key] - base["before"]) / MB
        emit(f"memory.rss_growth_{name}_1M_events", value, "MB", label, baseline,
             f"<= {TARGET_MB:.0f} MB", value <= TARGET_MB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
