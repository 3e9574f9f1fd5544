"""Keeping step results (issue 12): what it costs the engine, and a 100 MB array's trip.

1. Executor overhead, results kept vs not (``keep_results``), same script, same DAG:
   µs per no-op node for a chain and a fan-out of n nodes (``executor_overhead.py``'s
   workflows). Kept, each completion also pickles its result and writes it in the same
   transaction, and a step's code starts once its inputs' transaction committed: in a
   chain of no-op steps every link waits for one commit. The same chain of steps that
   each work for ``--work-ms`` (default 1 ms, busy, not asleep) shows what that wait
   costs a step that does something.
2. Event append, results kept vs not: ``event_append.py``'s 100k ``ctx.progress`` calls.
3. A 100 MB float64 array as a step result: persist time (encode + write + fsync, what a
   completion waits for) and load time (what a resume or ``run.result`` pays), against
   ``numpy.save`` / ``numpy.load`` of the same array in the same directory; ``numpy.save``
   is timed with an ``fsync`` too (the durable equivalent) and without.

    python benchmarks/results_persistence.py [--n 2000] [--repeat 5] [--events 100000] [--mb 100]
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

import _common
from _common import bench_dir, emit, note_load, timed
from event_append import append_rate
from executor_overhead import EngineRunner, engine_workflow

from engine.results import ResultArchive

TARGET_OVERHEAD = 1.10
TARGET_ARRAY = 1.5


def fsynced_save(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def busy(seconds: float):
    """A step body that computes for ``seconds`` (a spin on the clock, holding the GIL
    like numerical Python code that is not in a C extension)."""
    def work(*args):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return len(args)
    return work


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000, help="nodes per DAG (default 2000)")
    p.add_argument("--repeat", type=int, default=5, help="runs per side; the median counts")
    p.add_argument("--events", type=int, default=100_000, help="ctx.progress calls (default 100k)")
    p.add_argument("--mb", type=int, default=100, help="size of the array in MB (default 100)")
    p.add_argument("--work-ms", type=float, default=1.0,
                   help="each step's busy work in the chain of working steps (default 1 ms)")
    args = p.parse_args()
    note_load("before")
    with bench_dir(args.dir) as d:
        count = iter(range(10**6))
        kept, not_kept = EngineRunner(d, "kept", keep_results=True), EngineRunner(d, "not-kept", keep_results=False)
        kept(engine_workflow("chain", 50))
        not_kept(engine_workflow("chain", 50))
        for shape in ("chain", "fan"):
            wf = engine_workflow(shape, args.n)
            # Alternate the sides so that drift in the machine's load hits both alike.
            on, off = [], []
            for _ in range(args.repeat):
                on.append(kept(wf))
                off.append(not_kept(wf))
            us_on, us_off = statistics.median(on) / args.n * 1e6, statistics.median(off) / args.n * 1e6
            emit(f"results.executor_overhead.{shape}.n{args.n}", us_on, "us/node",
                 f"the same {args.n}-node {shape}, keep_results=False", us_off,
                 f"ratio <= {TARGET_OVERHEAD}", us_on / us_off <= TARGET_OVERHEAD)
        work = busy(args.work_ms / 1000)
        n_work = max(50, min(args.n, int(2.0 / (args.work_ms / 1000))))  # ~2 s of work a run
        wf = engine_workflow("chain", n_work, fn=work, name="working")
        on, off = [], []
        for _ in range(args.repeat):
            on.append(kept(wf))
            off.append(not_kept(wf))
        t_on, t_off = statistics.median(on), statistics.median(off)
        emit(f"results.working_chain.n{n_work}", t_on / n_work * 1e6, "us/node",
             f"the same chain of {args.work_ms:g} ms steps, keep_results=False", t_off / n_work * 1e6,
             f"ratio <= {TARGET_OVERHEAD}", t_on / t_off <= TARGET_OVERHEAD)
        on, off = [], []
        for _ in range(max(3, args.repeat // 2)):
            on.append(append_rate(os.path.join(d, f"append-on-{next(count)}.sqlite?keep_results=true"), args.events))
            off.append(append_rate(os.path.join(d, f"append-off-{next(count)}.sqlite?keep_results=false"), args.events))
        rate_on, rate_off = statistics.median(on), statistics.median(off)
        emit("results.event_append", rate_on, "events/s", "the same run, keep_results=False", rate_off,
             f"ratio >= {1 / TARGET_OVERHEAD:.2f}", rate_on / rate_off >= 1 / TARGET_OVERHEAD)

        array = np.random.default_rng(0).standard_normal(args.mb * 1_000_000 // 8)
        archive = ResultArchive(os.path.join(d, "results"), inline_max=1 << 20)
        npy = os.path.join(d, "array.npy")
        # Interleaved after a warm-up of each, each side writing a file anew every time
        # (the previous one deleted), so neither gets the cold first write or a cache; which
        # side goes first alternates, because the first 100 MB allocation after a burst of
        # writes may stall on the kernel compacting memory for huge pages (~0.25 s here),
        # whichever side makes it.
        persist, save, save_nosync, load, npload = [], [], [], [], []
        rounds = 7
        for i in range(rounds):
            if i % 2:
                t_save = timed(lambda: fsynced_save(npy, array))[0]
                t, stored = timed(lambda: archive.persist("run", "big", array, "f"))
            else:
                t, stored = timed(lambda: archive.persist("run", "big", array, "f"))
                t_save = timed(lambda: fsynced_save(npy, array))[0]
            os.remove(npy)
            t_nosync = timed(lambda: np.save(npy, array))[0]
            if i % 2:
                t_npload = timed(lambda: np.load(npy))[0]
                t_load = timed(lambda: archive.load(None, stored.location))[0]
            else:
                t_load = timed(lambda: archive.load(None, stored.location))[0]
                t_npload = timed(lambda: np.load(npy))[0]
            if i == rounds - 1:
                assert np.array_equal(archive.load(None, stored.location), array)
            os.remove(stored.location)
            os.remove(npy)
            if i:  # the first round warms up
                for acc, v in ((persist, t), (save, t_save), (save_nosync, t_nosync), (load, t_load),
                               (npload, t_npload)):
                    acc.append(v)
        t_persist, t_save, t_save_nosync = map(statistics.median, (persist, save, save_nosync))
        t_load, t_npload = statistics.median(load), statistics.median(npload)
        emit(f"results.persist_{args.mb}mb", t_persist, "s", "numpy.save + fsync of the same array, same disk",
             t_save, f"ratio <= {TARGET_ARRAY}", t_persist / t_save <= TARGET_ARRAY)
        emit(f"results.persist_{args.mb}mb_vs_unsynced_save", t_persist, "s",
             "numpy.save without fsync (not durable), same disk", t_save_nosync,
             f"ratio <= {TARGET_ARRAY} (information only: the baseline is not durable)",
             t_persist / t_save_nosync <= TARGET_ARRAY)
        emit(f"results.load_{args.mb}mb", t_load, "s", "numpy.load of the same array, same disk",
             t_npload, f"ratio <= {TARGET_ARRAY}", t_load / t_npload <= TARGET_ARRAY)
    note_load("after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
