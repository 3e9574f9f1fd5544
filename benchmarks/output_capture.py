"""Step output capture: a step printing 1,000,000 short lines, capture on vs off.

Each mode runs in a fresh child process: one step of ``print(i)`` for i in
range(--lines), from ``wf.start()`` to durable completion, median of ``--repeat`` runs
after a warm-up. Modes: ``off`` (the baseline: output untouched), ``tee`` (the
default: recorded and still written to stdout) and ``capture`` (recorded only). With
capture on, the per-attempt budget (engine.output) records the first lines and drops
the rest with a marker; the run's time and memory must not suffer from the flood.

Where the output would show (``sys.stdout`` of the child), two "cells":
``kernel``, an ipykernel ``OutStream`` publishing on a ZMQ socket as in a notebook
(what users run; the target applies here), and ``devnull``, a plain file on
/dev/null (the cheapest stream there is: every Python-level cost shows in full).

Figures: wall time of tee and capture over off, per cell (target ≤ 1.5× in the
kernel cell), and the peak RSS growth of the process during the tee run over its RSS
just before (psutil every 10 ms; target ≤ 20 MB), next to the same growth with
capture off.

    python benchmarks/output_capture.py [--lines 1000000] [--repeat 3] [--cells kernel,devnull]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import threading
import time

import orjson

import _common
from _common import bench_dir, emit, note, open_store, rss_bytes, run_to_completion, wait_stopped

from engine import Workflow

TARGET_RATIO = 1.5
TARGET_MB = 20.0
MB = 1024 * 1024


def printing_workflow(lines: int, mode: str) -> Workflow:
    wf = Workflow(f"print-{mode}-{lines}", capture_output=mode)

    @wf.step()
    def flood(ctx):
        for i in range(lines):
            print(i)
        return lines

    return wf


def cell_stream(cell: str):
    """The child's stdout: where a notebook cell would show the output."""
    if cell == "devnull":
        return open(os.devnull, "w")
    import zmq
    from ipykernel.iostream import IOPubThread, OutStream
    from jupyter_client.session import Session

    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.bind("tcp://127.0.0.1:*")
    pub = IOPubThread(sock)
    pub.start()
    return OutStream(Session(), pub, "stdout", watchfd=False)


def child(mode: str, cell: str, lines: int, repeat: int, directory: str) -> dict:
    """In the child: warm up, then time `repeat` runs and sample RSS during each."""
    sys.stdout = cell_stream(cell)
    store = open_store(os.path.join(directory, f"output-{mode}.sqlite"))
    wait_stopped(run_to_completion(printing_workflow(min(lines, 20_000), mode), store))
    times, peaks, before_all = [], [], None
    for _ in range(repeat):
        gc.collect()
        before = rss_bytes()
        before_all = before if before_all is None else before_all
        peak = [before]
        done = threading.Event()

        def sample():
            while not done.wait(0.01):
                peak[0] = max(peak[0], rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t = time.perf_counter()
        run = run_to_completion(printing_workflow(lines, mode), store)
        sys.stdout.flush()
        elapsed = time.perf_counter() - t
        wait_stopped(run)
        done.set()
        sampler.join()
        times.append(elapsed)
        peaks.append(max(peak[0], rss_bytes()) - before)
        node = run.snapshot()["nodes"][0]
        recorded, dropped = node.get("output_lines", 0), node.get("output_dropped", 0)
    store.close()
    return {"seconds": statistics.median(times), "all": times, "peak_growth": max(peaks),
            "recorded": recorded, "dropped": dropped}


def measure(mode: str, cell: str, args, directory: str) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", mode, "--cell", cell,
         "--lines", str(args.lines), "--repeat", str(args.repeat), "--dir", directory],
        check=True, stdout=subprocess.PIPE, text=True)
    result = orjson.loads(out.stdout.strip().splitlines()[-1])
    note(f"{cell} cell, {mode}: median {result['seconds']:.2f} s {[round(s, 2) for s in result['all']]}, "
         f"peak RSS growth {result['peak_growth'] / MB:.1f} MB; lines recorded {result['recorded']}, "
         f"dropped {result['dropped']}")
    return result


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cells", default="kernel,devnull", help="kernel, devnull or both")
    p.add_argument("--child", choices=("off", "tee", "capture"), help=argparse.SUPPRESS)
    p.add_argument("--cell", choices=("kernel", "devnull"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = child(args.child, args.cell, args.lines, args.repeat, args.dir)
        sys.__stdout__.write(orjson.dumps(result).decode() + "\n")
        os._exit(0)  # the kernel cell's publishing thread would hold the exit

    k = args.lines // 1000
    with bench_dir(args.dir) as d:
        for cell in args.cells.split(","):
            off = measure("off", cell, args, d)
            tee = measure("tee", cell, args, d)
            cap = measure("capture", cell, args, d)
            label = (f"the same step ({args.lines:,} print() calls) with capture_output='off', "
                     f"stdout a {cell} cell, own process")
            target = f"ratio <= {TARGET_RATIO}" if cell == "kernel" else "none (worst case, informative)"
            for mode, result in (("tee", tee), ("capture", cap)):
                ratio = result["seconds"] / off["seconds"]
                emit(f"output.wall_{k}k_lines_{mode}_{cell}_cell", result["seconds"], "s", label,
                     off["seconds"], target, ratio <= TARGET_RATIO)
            growth = tee["peak_growth"] / MB
            emit(f"output.rss_growth_peak_{k}k_lines_tee_{cell}_cell", growth, "MB",
                 "peak RSS growth of the same run with capture_output='off'", off["peak_growth"] / MB,
                 f"<= {TARGET_MB:.0f} MB", growth <= TARGET_MB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
