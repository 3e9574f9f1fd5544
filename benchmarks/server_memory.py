"""Server memory: RSS growth of the jupyter server process while it streams N events to 100 subscribers.

A real ``jupyter server`` (subprocess, cmbagent_jupyter enabled) serves a SQLite store.
A separate process runs the engine: one step calling ``ctx.progress`` ``--events``
times as fast as it can. ``--clients`` sockets in ``--procs`` client processes follow
the run; they locate seqs with ``str.find`` (no JSON parse: 100 x N deliveries) and
check that every event arrives once, in order (a ``reset`` for a slow consumer would be
counted and reported).

RSS of the server process (psutil) is taken after a warm-up run (20k events to 100
other sockets) and once the measured sockets have subscribed ("before"), sampled every
50 ms while the events stream (peak), and 2 s after every socket has the last event
("after"; the server's garbage collector is not forced). Figures: peak - before, and
after - before, in MB (2**20 bytes); the figure's name carries the scale.

The default scale is 1M events (~23 GB of WebSocket payload through one Python process
on a 2-core machine shared with the writer and the clients); a second figure is how long
the streaming took (gate opened -> every socket has the last event), against < 120 s.

Baseline: ``_baseline_ws.py paced --rate 0``, a plain Tornado server broadcasting
``--baseline-events`` events (default 2k: one frame per event per socket, so 200k frames
at 100 sockets, as fast as its loop can write them) to the same number of sockets, with
the same RSS sampling.

    python benchmarks/server_memory.py [--events 1000000] [--clients 100] [--procs 4] [--baseline-events 2000]
"""

from __future__ import annotations

import os
import signal
import time

import _common
from _common import bench_dir, emit, note
from _fleet import Fleet
from _load import Writer
from _probes import Profiler, RssSampler
from _servers import BaselineServer, JupyterServer
from _stats import delivery_summary

TARGET_MB = 50.0
#: Seconds to stream the events to every socket (gate opened -> every socket has the last one).
TARGET_S = 120.0
MB = 2**20


def stream(server, fleet: Fleet, sampler_pid: int, start, finish, last_seq, timeout: float, what: str) -> dict:
    """Measure RSS around ``start()`` .. every socket has ``last_seq`` (``finish()`` returns it)."""
    time.sleep(1.0)
    before = server.rss()
    cpu = server.cpu_seconds() if hasattr(server, "cpu_seconds") else None
    clients_cpu = fleet.cpu_seconds()
    sampler = RssSampler(sampler_pid, 0.05)
    t = time.perf_counter()
    start()
    last = finish() if last_seq is None else last_seq
    if last_seq is None:
        fleet.expect(last)
    done = fleet.wait_done(timeout)
    elapsed = time.perf_counter() - t
    cpu = None if cpu is None else server.cpu_seconds() - cpu
    clients_cpu = fleet.cpu_seconds() - clients_cpu
    time.sleep(2.0)
    after = server.rss()
    sampler.stop()
    res = fleet.stop(None)
    summary = delivery_summary(res["socks"], last)
    note(f"{what}: {elapsed:.1f} s to deliver {last} seqs to {len(res['socks'])} sockets (all: {done});"
         f" RSS {before / MB:.0f} MB before, peak {sampler.peak / MB:.0f}, after {after / MB:.0f};"
         f" {summary['events']} deliveries in {summary['frames']} frames, {summary['bytes'] / 2**30:.2f} GiB;"
         f" gaps {summary['gaps']} dups {summary['dups']} resets {summary['resets']}"
         + ("" if cpu is None else f"; server CPU {cpu:.1f} s ({1e6 * cpu / last:.0f} us/event)")
         + f"; client processes CPU {clients_cpu:.1f} s")
    return {"before": before, "peak": sampler.peak, "after": after, "done": done, "summary": summary,
            "elapsed": elapsed, "cpu": cpu}


def engine_run(server: JupyterServer, db: str, events: int, clients: int, procs: int, timeout: float,
               what: str, profile: bool = False) -> dict:
    writer = Writer(db, events, 0.0, name=what)
    fleet = Fleet(server.ws_url, server.headers, writer.run_id, clients, procs)
    try:
        fleet.wait_ready(300)

        out: dict = {}

        def finish() -> int:
            out.update(writer.result(timeout))
            import sqlite3

            conn = sqlite3.connect(db)
            last = conn.execute("SELECT last_seq FROM runs WHERE id=?", (writer.run_id,)).fetchone()[0]
            conn.close()
            return last

        with Profiler(server.pid, profile, what):
            res = stream(server, fleet, server.pid, writer.open_gate, finish, None, timeout, what)
        note(f"{what}: the writer process (engine) used {out['cpu_s']:.1f} s CPU in all")
        return res
    finally:
        fleet.kill()


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--baseline-events", type=int, default=2_000)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    t_start = time.perf_counter()

    with bench_dir(args.dir) as d:
        db = os.path.join(d, "served.sqlite")
        server = JupyterServer(db, d)
        try:
            engine_run(server, db, 20_000, args.clients, args.procs, args.timeout, "warm-up (not a figure)")
            eng = engine_run(server, db, args.events, args.clients, args.procs, args.timeout,
                             f"server, {args.events} events", profile=args.profile)
        finally:
            server.stop()

        n = args.baseline_events
        base_srv = BaselineServer("paced", "--events", str(n), "--rate", "0", "--clients", str(args.clients),
                                  "--go-signal")
        fleet = Fleet(base_srv.ws_url, None, "baseline-run", args.clients, args.procs, after_seq=0, expect=n)
        try:
            fleet.wait_ready(300)
            base = stream(base_srv, fleet, base_srv.pid, lambda: os.kill(base_srv.pid, signal.SIGUSR1), None,
                          n, args.timeout,
                          f"baseline, {n} events")
        finally:
            fleet.kill()
            base_srv.stop()

    scale = f"{args.events / 1e6:g}M" if args.events >= 1_000_000 else f"{args.events // 1000}k"
    label = (f"plain Tornado WebSocket server, one frame per event, {n} events (1/{args.events // n} of the "
             f"scale) broadcast as fast as it writes to the same {args.clients} sockets")
    clean = eng["done"] and not (eng["summary"]["gaps"] or eng["summary"]["dups"] or eng["summary"]["resets"])
    for name, key in (("peak", "peak"), ("retained", "after")):
        v = (eng[key] - eng["before"]) / MB
        bv = (base[key] - base["before"]) / MB
        emit(f"server_memory.rss_growth_{name}_MB_{scale}_events_{args.clients}subs", v, "MB", label, bv,
             f"<= {TARGET_MB:g} MB, every event delivered", v <= TARGET_MB and clean)
    emit(f"server_memory.stream_seconds_{scale}_events_{args.clients}subs", eng["elapsed"], "s",
         f"the same baseline, {n} events", base["elapsed"], f"< {TARGET_S:g} s, every event delivered",
         eng["elapsed"] < TARGET_S and clean)
    note(f"[server_memory.py] {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
