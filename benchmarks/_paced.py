"""Paced runs: the latency and fan-out benchmarks (server_latency.py, server_fanout.py),
and the replicas' (server_replicas.py).

A writer paces ``ctx.progress`` at a rate while a fleet of sockets follows the run,
against the server and then against ``_baseline_ws.py paced`` at the same load.
"""

from __future__ import annotations

import time

import numpy as np

from _common import note
from _fleet import Fleet
from _load import Writer
from _probes import Profiler, RssSampler
from _servers import BaselineServer, JupyterServer
from _stats import commit_times, delivery_summary, event_table, latency_stats, tsmap_array


def paced_engine(server: JupyterServer, db: str, clients: int, procs: int, rate: float, seconds: float,
                 grace: float, name: str, profile: bool = False) -> dict:
    """The engine writes ``rate`` progress events/s for ``seconds`` (its own process) while
    ``clients`` sockets follow the run; latencies from commit and from the event timestamp."""
    n = int(rate * seconds)
    writer = Writer(db, n, rate, name=name)
    fleet = Fleet(server.ws_url, server.headers, writer.run_id, clients, procs, parse=True)
    try:
        t = time.perf_counter()
        ready = fleet.wait_ready(600)
        note(f"{name}: {clients} sockets in {len(fleet.procs)} client processes subscribed in"
             f" {time.perf_counter() - t:.1f} s (connect {max(r['connect_s'] for r in ready):.1f} s)")
        cpu0, rss0, clients_cpu0 = server.cpu_seconds(), server.rss(), fleet.cpu_seconds()
        with Profiler(server.pid, profile, f"server: {name}"):
            writer.open_gate()
            out = writer.result(seconds + 300)
            ts, types = event_table(db, writer.run_id)
            last = len(ts) - 1
            fleet.expect(last)
            t_end = time.time()
            complete = fleet.wait_done(grace)
        cpu = server.cpu_seconds() - cpu0
        clients_cpu = fleet.cpu_seconds() - clients_cpu0
        res = fleet.stop(last + 1)
    finally:
        fleet.kill()
    waited = time.time() - t_end
    recv = np.vstack([s["recv"] for s in res["socks"]])
    prog = np.nonzero(types == "step_progress")[0]
    commit = commit_times(out["commits"], last + 1)
    summary = delivery_summary(res["socks"], last)
    stats = {"commit": latency_stats(recv, commit, prog), "record": latency_stats(recv, ts, prog),
             "summary": summary, "complete": complete, "events": len(prog),
             "server_cpu_share": cpu / (seconds + waited), "clients_cpu_share": clients_cpu / (seconds + waited),
             "errors": res["errors"],
             "client_loop_lag_ms": res["loop_lag_ms"]}
    c, r = stats["commit"], stats["record"]
    note(f"{name}: {len(prog)} events x {clients} sockets: delivered {c['delivered']}/{c['expected']}"
         f" (all by the end: {complete}); commit->receipt p50 {c['p50']:.1f} p90 {c['p90']:.1f}"
         f" p99 {c['p99']:.1f} max {c['max']:.1f} ms; record->receipt p50 {r['p50']:.1f} p99 {r['p99']:.1f} ms;"
         f" server CPU {100 * stats['server_cpu_share']:.0f}% of a core, client processes"
         f" {100 * stats['clients_cpu_share']:.0f}%; server RSS"
         f" {rss0 / 2**20:.0f} -> {server.rss() / 2**20:.0f} MB; frames {summary['frames']},"
         f" gaps {summary['gaps']} dups {summary['dups']} resets {summary['resets']}; run {out['state']};"
         f" client loops late by p50 {res['loop_lag_ms']['p50']:.1f} p99 {res['loop_lag_ms']['p99']:.1f} ms")
    if res["errors"]:
        note(f"{name}: error frames: {res['errors'][:3]}")
    return stats


#: What ``paced_baseline`` returns when the baseline is skipped (``--no-baseline``).
NO_BASELINE = {"due": {"expected": 1, "delivered": 0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0,
                        "max": 0.0}}


def paced_baseline(clients: int, procs: int, rate: float, seconds: float, grace: float, name: str) -> dict:
    """``_baseline_ws.py paced``: the same load, one frame per event per socket; latency from
    each event's due time (its timestamp)."""
    n = int(rate * seconds)
    base = BaselineServer("paced", "--events", str(n), "--rate", str(rate), "--clients", str(clients))
    fleet = Fleet(base.ws_url, None, "baseline-run", clients, procs, after_seq=0, parse=True,
                  capture_ts=True, expect=n)
    try:
        t = time.perf_counter()
        fleet.wait_ready(600)
        note(f"{name}: {clients} sockets subscribed in {time.perf_counter() - t:.1f} s")
        rss0 = base.rss()
        sampler = RssSampler(base.pid, 0.2)
        complete = fleet.wait_done(seconds + 2 + grace)
        sampler.stop()
        res = fleet.stop(n + 1)
    finally:
        fleet.kill()
        base.stop()
    recv = np.vstack([s["recv"] for s in res["socks"]])
    ts = tsmap_array(res["tsmap"], n + 1)
    known = np.nonzero(~np.isnan(ts))[0]
    if len(known):  # event i was due at t0 + (i - 1) / rate: fill the ones no socket 0 saw
        t0 = ts[known[0]] - (known[0] - 1) / rate
        ts = t0 + (np.arange(n + 1) - 1) / rate
    seqs = np.arange(1, n + 1)
    stats = {"due": latency_stats(recv, ts, seqs), "summary": delivery_summary(res["socks"], n),
             "complete": complete, "events": n, "peak_rss_growth": sampler.peak - rss0}
    c = stats["due"]
    note(f"{name}: {n} events x {clients} sockets: delivered {c['delivered']}/{c['expected']} (all: {complete});"
         f" due->receipt p50 {c['p50']:.1f} p90 {c['p90']:.1f} p99 {c['p99']:.1f} max {c['max']:.1f} ms"
         f" (over delivered); baseline RSS peak +{stats['peak_rss_growth'] / 2**20:.0f} MB;"
         f" gaps {stats['summary']['gaps']} dups {stats['summary']['dups']}; client loops late by p50"
         f" {res['loop_lag_ms']['p50']:.1f} p99 {res['loop_lag_ms']['p99']:.1f} ms")
    return stats


def paced_comparison(args, db: str, d: str):
    """The server (after a warm-up) and then the baseline, both paced at ``args.rate``
    to ``args.clients`` sockets: ``(server figures, baseline figures)``."""
    server = JupyterServer(db, d)
    try:
        paced_engine(server, db, 2, 1, args.rate, 1.0, 5.0, "warm-up")
        eng = paced_engine(server, db, args.clients, args.procs, args.rate, args.seconds, args.grace,
                           f"server, {args.clients} subscribers")
        if args.profile:
            paced_engine(server, db, args.clients, args.procs, args.rate, min(args.seconds, 10.0),
                         args.grace, "profiled run (not a figure)", profile=True)
    finally:
        server.stop()
    base = (NO_BASELINE if args.no_baseline else
            paced_baseline(args.clients, args.procs, args.rate, args.seconds, args.grace,
                           f"baseline, {args.clients} subscribers"))
    return eng, base
