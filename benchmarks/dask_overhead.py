"""Dask executor overhead: µs per no-op node of a run whose steps execute on a Dask
cluster (``wf.start(store, dask=client)``), against ``client.submit`` of the same no-op
tasks on the same cluster.

Both sides use one ``LocalCluster`` (worker processes, dashboard off) started by this
script, in the same process, alternating, median of ``--repeat``. Shapes: a chain of n
nodes, and a fan-out (one root -> n-1 leaves). The engine's time runs from
``wf.start()`` to ``run.wait()`` returning: every transition durably logged, every
result back in this process (the executor's cleanup on the cluster is waited for
outside the timing, before the next measurement). The baseline submits the same no-op
function with ``client.submit(noop, upstream_future)``: chained through futures on the
scheduler, no round trip to this process between nodes, and waits for every future
(``distributed.wait``).

    python benchmarks/dask_overhead.py [--n 300] [--repeat 3] [--workers 2] [--threads 1]
                                       [--profile]
"""

from __future__ import annotations

import os

import _common
import executor_overhead
from _common import bench_dir, emit, maybe_profile, median_time, open_store, timed, wait_stopped

import distributed

from engine import Workflow
from engine.runtime import local_executor

#: engine / client.submit per node: a chain (issue 16's target), a fan-out.
TARGET_RATIO = {"chain": 1.5, "fan": 2.0}


def noop(*args):  # defined here, in __main__: Dask ships it to the workers by value
    return None


def engine_workflow(shape: str, n: int) -> Workflow:
    return executor_overhead.engine_workflow(shape, n, fn=noop, name="dask-overhead")


def submit_all(client: distributed.Client, shape: str, n: int) -> None:
    """The baseline: the same no-op tasks, chained through futures, all waited for."""
    if shape == "chain":
        fut = client.submit(noop, pure=False)
        futures = [fut]
        for _ in range(1, n):
            fut = client.submit(noop, fut, pure=False)
            futures.append(fut)
    else:
        root = client.submit(noop, pure=False)
        futures = [root] + [client.submit(noop, root, pure=False) for _ in range(1, n)]
    distributed.wait(futures)


class EngineRunner:
    """Runs a workflow on the cluster with a fresh store file each time."""

    def __init__(self, directory: str, client: distributed.Client):
        self.directory = directory
        self.client = client
        self.count = 0

    def __call__(self, wf: Workflow) -> float:
        self.count += 1
        store = open_store(os.path.join(self.directory, f"dask-{self.count}.sqlite"))
        runner = None
        try:
            def run_it():
                run = wf.start(store=store, dask=self.client)
                state = run.wait(600)
                if state != "completed":
                    raise RuntimeError(f"benchmark run {run.id} ended {state.value}")
                return run

            elapsed, run = timed(run_it)
            runner = local_executor(run.id).pool  # off the clock: the executor goes idle
            wait_stopped(run)
            return elapsed
        finally:
            store.close()  # stops the executor (a completed run stays held until then)...
            if runner is not None:
                runner.join(30)  # ...and its runner finishes


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=300, help="nodes per DAG (default 300)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per shape and side; the median counts")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    args = p.parse_args()

    with bench_dir(args.dir) as d, distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=args.threads, processes=True,
            dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(args.workers)
        runner = EngineRunner(d, client)
        runner(engine_workflow("chain", 20))  # warm up: imports, worker clients, pickling
        submit_all(client, "chain", 20)
        cluster_desc = f"LocalCluster {args.workers} workers x {args.threads} thread(s)"
        for shape in ("chain", "fan"):
            n = args.n
            wf = engine_workflow(shape, n)
            t_engine = median_time(lambda: runner(wf), args.repeat)
            t_dask = median_time(lambda: submit_all(client, shape, n), args.repeat)
            us_engine, us_dask = t_engine / n * 1e6, t_dask / n * 1e6
            ratio = us_engine / us_dask
            label = "a chain" if shape == "chain" else "one root -> n-1 leaves"
            emit(f"dask_overhead.{shape}.n{n}", us_engine, "us/node",
                 f"client.submit of the same {n} no-op tasks ({label}, chained via futures), "
                 f"same {cluster_desc}", us_dask,
                 f"ratio engine/client.submit <= {TARGET_RATIO[shape]}", ratio <= TARGET_RATIO[shape])
            if args.profile:
                with maybe_profile(True, f"engine on Dask, {shape} of {n} no-op nodes"):
                    runner(engine_workflow(shape, n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
