"""Server throughput: events/s from the store to one WebSocket subscriber, end to end.

A real ``jupyter server`` (subprocess, cmbagent_jupyter enabled, token auth) serves a
SQLite store; one client process holds the subscriber socket. The figure is
``events / (first commit -> last receipt)``: from the moment the first transaction
holding the run's events returned in the writing process to the moment the client
process received the frame with the last one (``time.time()``, one machine). Two
sources, each its own figure, median of ``--repeat``:

- ``replayed_log``: a finished 100k-progress-event run (written by the engine before the
  server starts) has its events from the first ``step_progress`` on held back; a
  separate process commits them again, 2000 rows per transaction (the journal's batch
  limit), as fast as SQLite takes them. This measures the server (tail, read, encode,
  send) rather than the engine's append rate.
- ``live_progress``: a separate process runs the engine: one step calling
  ``ctx.progress`` 100k times in a loop (the step waits for a gate so the client can
  subscribe first). Bound by the engine's own append rate on this machine (the writer's
  own commit rate, and the lag of the last receipt behind the last commit, are on stderr).

The client reads seqs with ``str.find`` (no JSON parse) and checks every seq arrived
once, in order. Baseline: ``_baseline_ws.py burst`` (a plain Tornado server, events in
memory, one frame per event), same client, from the write of the first frame to the
receipt of the last.

    python benchmarks/server_throughput.py [--events 100000] [--repeat 3] [--profile]
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

import _common
from _common import bench_dir, emit, note, open_store, progress_workflow, run_to_completion, wait_stopped
from _fleet import Fleet
from _load import Replayer, Writer, hold_back
from _probes import Profiler
from _servers import BaselineServer, JupyterServer
from _stats import commit_times, delivery_summary, event_table, tsmap_array

#: events/s: the server's capacity (a replayed log), and end to end from ctx.progress (issue 16).
TARGETS = {"replayed_log": 100_000.0, "live_progress": 150_000.0}


def check(summary: dict, what: str) -> None:
    if summary["gaps"] or summary["dups"] or summary["bad"] or summary["resets"] or summary["complete"] != 1:
        note(f"WARNING {what}: delivery anomalies {summary}")


def replayed(server: JupyterServer, db: str, run_id: str, after: int, last: int) -> float:
    fleet = Fleet(server.ws_url, server.headers, run_id, 1, 1, after_seq=after, expect=last)
    try:
        fleet.wait_ready(120)
        rep = Replayer(db, run_id, after, last)
        cpu = server.cpu_seconds()
        rep.open_gate()
        if not fleet.wait_done(120):
            note("WARNING replayed: the client did not receive the last event within 120 s")
        commits = rep.result()["commits"]
        cpu = server.cpu_seconds() - cpu
        res = fleet.stop(last + 1)
    finally:
        fleet.kill()
    sock = res["socks"][0]
    check(delivery_summary(res["socks"], last), "replayed")
    t_first, t_last_commit = commits[0][2], commits[-1][2]
    t_last = sock["recv"][last]
    n = last - after
    rate = n / (t_last - t_first)
    note(f"replayed {n} events: {rate:,.0f} events/s (commits alone {n / (t_last_commit - t_first):,.0f}/s;"
         f" last receipt {1000 * (t_last - t_last_commit):.1f} ms after the last commit;"
         f" {sock['frames']} frames; server CPU {1e6 * cpu / n:.1f} us/event)")
    return rate


def live(server: JupyterServer, db: str, events: int, tag: str) -> float:
    writer = Writer(db, events, rate=0.0, name=f"live-{tag}")
    fleet = Fleet(server.ws_url, server.headers, writer.run_id, 1, 1)
    try:
        fleet.wait_ready(120)
        cpu = server.cpu_seconds()
        writer.open_gate()
        out = writer.result(600)
        ts, types = event_table(db, writer.run_id)
        last = len(ts) - 1
        fleet.expect(last)
        if not fleet.wait_done(120):
            note("WARNING live: the client did not receive the last event within 120 s")
        cpu = server.cpu_seconds() - cpu
        res = fleet.stop(last + 1)
    finally:
        fleet.kill()
    sock = res["socks"][0]
    check(delivery_summary(res["socks"], last), "live")
    prog = np.nonzero(types == "step_progress")[0]
    first, final = int(prog[0]), int(prog[-1])
    commit = commit_times(out["commits"], last + 1)
    t_first, t_last = commit[first], sock["recv"][final]
    rate = len(prog) / (t_last - t_first)
    note(f"live {len(prog)} progress events: {rate:,.0f} events/s (writer's commits alone"
         f" {len(prog) / (commit[final] - t_first):,.0f}/s; last receipt {1000 * (t_last - commit[final]):.1f} ms"
         f" after its commit; {sock['frames']} frames; server CPU {1e6 * cpu / len(prog):.1f} us/event;"
         f" run {out['state']})")
    return rate


def baseline(base: BaselineServer, events: int) -> float:
    fleet = Fleet(base.ws_url, None, "baseline-run", 1, 1, after_seq=0, expect=events, capture_ts=True)
    try:
        fleet.wait_ready(120)
        if not fleet.wait_done(300):
            note("WARNING baseline: the client did not receive the last event within 300 s")
        res = fleet.stop(events + 1)
    finally:
        fleet.kill()
    sock = res["socks"][0]
    check(delivery_summary(res["socks"], events), "baseline")
    t0 = tsmap_array(res["tsmap"], events + 1)[1]
    rate = events / (sock["recv"][events] - t0)
    note(f"baseline {events} events, one frame each: {rate:,.0f} events/s")
    return rate


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3, help="runs per source; the median counts")
    args = p.parse_args()
    t_start = time.perf_counter()

    with bench_dir(args.dir) as d:
        db = os.path.join(d, "served.sqlite")
        store = open_store(db)
        held = []
        for r in range(args.repeat + (1 if args.profile else 0)):
            run = run_to_completion(progress_workflow(args.events, name=f"replay-{r}"), store)
            wait_stopped(run)
            held.append(run.id)
        store.close()
        held = [(rid, *hold_back(db, rid)) for rid in held]
        note(f"prepared {len(held)} runs of {args.events} progress events in"
             f" {time.perf_counter() - t_start:.1f} s")

        server = JupyterServer(db, d)
        try:
            live(server, db, 2_000, "warmup")  # the first connection pays for imports, hub start
            rep_rates = [replayed(server, db, rid, after, last) for rid, after, last in held[:args.repeat]]
            live_rates = [live(server, db, args.events, str(r)) for r in range(args.repeat)]
            if args.profile:
                rid, after, last = held[-1]
                with Profiler(server.pid, True, "server during a replayed-log run"):
                    replayed(server, db, rid, after, last)
                with Profiler(server.pid, True, "server during a live-progress run"):
                    live(server, db, args.events, "profiled")
        finally:
            server.stop()

        base = BaselineServer("burst", "--events", str(args.events))
        try:
            base_rates = [baseline(base, args.events) for _ in range(args.repeat)]
        finally:
            base.stop()

    b = statistics.median(base_rates)
    label = ("plain Tornado WebSocket server, events in memory, one frame per event, same client process;"
             " first frame written -> last received")
    for name, rates in (("replayed_log", rep_rates), ("live_progress", live_rates)):
        v = statistics.median(rates)
        emit(f"server_throughput.{name}_events_per_s_{args.events // 1000}k", v, "events/s", label, b,
             f">= {TARGETS[name]:,.0f} events/s", v >= TARGETS[name])
    note(f"[server_throughput.py] {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
