"""Server latency: commit -> client receipt at 100 events/s with 100 subscribers.

A real ``jupyter server`` (subprocess, cmbagent_jupyter enabled) serves a SQLite store.
A separate process runs the engine: one step calling ``ctx.progress`` at 100 events/s
for ``--seconds`` (each call is its own commit at that rate). ``--clients`` sockets,
spread over ``--procs`` client processes (asyncio, tornado's client), subscribe to the
run first, then parse every frame (orjson) and note its receive time.

Latency per (socket, event) = receive time - origin, with ``time.time()`` on one
machine. Two origins:

- ``commit``: the wall time at which the transaction holding the event returned in the
  writing process (the engine's ``store.apply_commits`` wrapped in that process only):
  the server's part (poll, read, encode, send) plus the client's.
- ``record``: the event's own ``timestamp``, set when the step recorded it, *before*
  the journal committed it (includes the engine's group-commit delay).

Baseline: ``_baseline_ws.py paced``, a plain Tornado server broadcasting the same rate
to the same number of sockets, one frame per event, from memory (no store); its latency
is from each event's due time (= its timestamp).

``--history N`` first writes a finished run of N events into the store (a user's default
store accumulates every run): the figure names then carry ``_historyNk``.

    python benchmarks/server_latency.py [--clients 100] [--rate 100] [--seconds 20] [--procs 4]
                                        [--history 0] [--profile]
"""

from __future__ import annotations

import os
import time

import _common
from _common import bench_dir, emit, note, open_store, progress_workflow, run_to_completion, wait_stopped
from _paced import paced_comparison

P50_MS, P99_MS = 10.0, 30.0


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rate", type=float, default=100.0, help="events per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds after the last commit for the last event to reach every socket")
    p.add_argument("--history", type=int, default=0,
                   help="events of an older, finished run written to the store first (a store with "
                        "history, as a user's default store accumulates); 0: a fresh store")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the baseline (A/B runs of the server alone); baseline_value is then 0")
    args = p.parse_args()
    t_start = time.perf_counter()

    with bench_dir(args.dir) as d:
        db = os.path.join(d, "served.sqlite")
        if args.history:
            store = open_store(db)
            run = run_to_completion(progress_workflow(args.history, name="history"), store)
            wait_stopped(run)
            store.close()
            note(f"store holds a finished run of {args.history} events")
        eng, base = paced_comparison(args, db, d)

    tag = f"{args.clients}subs_{args.rate:g}eps" + (f"_history{args.history // 1000}k" if args.history else "")
    label = (f"plain Tornado WebSocket server, one frame per event, events from memory, {args.clients} "
             f"sockets in {args.procs} client processes; latency from each event's due time")
    if args.no_baseline:
        label = "skipped (--no-baseline)"
    for origin in ("commit", "record"):
        for q, target in (("p50", P50_MS), ("p99", P99_MS)):
            v, all_delivered = eng[origin][q], eng[origin]["delivered"] == eng[origin]["expected"]
            emit(f"server_latency.{origin}_to_receipt_{q}_ms_{tag}", v, "ms", label, base["due"][q],
                 f"<= {target:g} ms, every event delivered", v <= target and all_delivered)
    note(f"[server_latency.py] {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
