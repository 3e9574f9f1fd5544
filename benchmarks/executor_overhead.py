"""Executor overhead: µs per no-op node, engine vs dask's threaded scheduler, same DAG.

Two shapes of n nodes each: a chain (node i depends on node i-1) and a fan-out (one
root, n-1 leaves depending on it). The engine's time runs from ``wf.start()`` to
``run.wait()`` returning, so it includes writing the DAG and durably logging every
transition (two per node: running, completed). The baseline is
``dask.threaded.get`` on the equivalent dask graph dict, all keys requested, with as
many worker threads as the engine's default pool.

Sizes grow 1k, 2k, 5k, 10k (up to ``--n``); a size whose predicted time (from the
measured scaling) would exceed the time budget is skipped, and the figures stop
at the largest size measured — the figure's name says which n it is.

    python benchmarks/executor_overhead.py [--n 10000] [--repeat 3] [--budget 150] [--profile]
"""

from __future__ import annotations

import math
import os
import time

import _common
from _common import (bench_dir, emit, maybe_profile, median_time, note, open_store,
                     run_to_completion, timed, wait_stopped)

import dask.threaded

from engine import Workflow
from engine.workflow import make_step

TARGET_RATIO = 1.0
LADDER = (1_000, 2_000, 5_000, 10_000)


def noop(*args):
    return None


def engine_workflow(shape: str, n: int, fn=noop, name: str = "overhead") -> Workflow:
    """n nodes running ``fn``: a chain, or a fan-out (one root -> n-1 leaves)."""
    wf = Workflow(f"{name}-{shape}-{n}")
    if shape == "chain":
        wf.add(make_step(fn, name="n0"))
        for i in range(1, n):
            wf.add(make_step(fn, name=f"n{i}", deps=[f"n{i - 1}"]))
    else:
        wf.add(make_step(fn, name="root"))
        for i in range(1, n):
            wf.add(make_step(fn, name=f"n{i}", deps=["root"]))
    return wf


def dask_graph(shape: str, n: int) -> dict:
    if shape == "chain":
        dsk = {"n0": (noop,)}
        for i in range(1, n):
            dsk[f"n{i}"] = (noop, f"n{i - 1}")
    else:
        dsk = {"root": (noop,)}
        for i in range(1, n):
            dsk[f"n{i}"] = (noop, "root")
    return dsk


class EngineRunner:
    """Runs a workflow on a fresh store file each time, so runs do not share a log;
    ``options``: the stores' (e.g. keep_results), ``tag``: their files' prefix."""

    def __init__(self, directory: str, tag: str = "overhead", **options):
        self.directory = directory
        self.tag = tag
        self.options = options
        self.count = 0

    def __call__(self, wf: Workflow) -> float:
        self.count += 1
        store = open_store(os.path.join(self.directory, f"{self.tag}-{self.count}.sqlite"), **self.options)
        try:
            elapsed, run = timed(lambda: run_to_completion(wf, store))
            wait_stopped(run)
            return elapsed
        finally:
            store.close()


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="largest DAG size (default 10000)")
    p.add_argument("--repeat", type=int, default=5, help="runs per size and side; the median counts")
    p.add_argument("--budget", type=float, default=150.0,
                   help="seconds allowed for the measurements of both shapes (the profile run,"
                        " if asked for, comes on top)")
    args = p.parse_args()

    width = min(32, (os.cpu_count() or 1) + 4)  # the engine's default pool width
    sizes = [n for n in LADDER if n < args.n] + [args.n]
    started = time.perf_counter()
    with bench_dir(args.dir) as d:
        runner = EngineRunner(d)
        runner(engine_workflow("chain", 50))  # warm up imports, pydantic, sqlite
        dask.threaded.get(dask_graph("chain", 50), ["n49"], num_workers=width)
        for shape_i, shape in enumerate(("chain", "fan")):
            shape_budget = (args.budget - (time.perf_counter() - started)) / (2 - shape_i)
            shape_start = time.perf_counter()
            done: list[tuple[int, float]] = []  # (n, seconds per repetition, both sides)
            for n in sizes:
                left = shape_budget - (time.perf_counter() - shape_start)
                if done:
                    predicted = _predict(done, n) * args.repeat
                    if predicted > left:
                        note(f"{shape}: skipping n={n} and up: predicted {predicted:.0f} s for "
                             f"{args.repeat} runs of each side, {left:.0f} s left in the budget")
                        break
                size_start = time.perf_counter()
                wf = engine_workflow(shape, n)
                dsk = dask_graph(shape, n)
                keys = list(dsk)
                t_engine = median_time(lambda: runner(wf), args.repeat)
                t_dask = median_time(lambda: dask.threaded.get(dsk, keys, num_workers=width),
                                     args.repeat)
                done.append((n, (time.perf_counter() - size_start) / args.repeat))
                us_engine, us_dask = t_engine / n * 1e6, t_dask / n * 1e6
                ratio = us_engine / us_dask
                label = "a chain" if shape == "chain" else "one root -> n-1 leaves"
                emit(f"executor_overhead.{shape}.n{n}", us_engine, "us/node",
                     f"dask.threaded.get on the same {n}-node DAG ({label}), num_workers={width}",
                     us_dask, f"ratio engine/dask <= {TARGET_RATIO}", ratio <= TARGET_RATIO)
            if args.profile and done:
                n = done[-1][0]
                with maybe_profile(True, f"engine, {shape} of {n} no-op nodes"):
                    runner(engine_workflow(shape, n))
    return 0


def _predict(done: list[tuple[int, float]], n: int) -> float:
    """Seconds per repetition at size n, extrapolating the measured power law (at least linear)."""
    if len(done) == 1:
        n1, t1 = done[0]
        return t1 * (n / n1) ** 2  # assume the worst until there are two points
    (n1, t1), (n2, t2) = done[-2], done[-1]
    k = math.log(max(t2, 1e-9) / max(t1, 1e-9)) / math.log(n2 / n1)
    return t2 * (n / n2) ** min(3.0, max(1.0, k))


if __name__ == "__main__":
    raise SystemExit(main())
