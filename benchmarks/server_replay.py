"""Server replay: a reconnecting client catches up on 100k missed events.

The engine writes a run of 100k ``ctx.progress`` events (plus its lifecycle events)
into a SQLite store before a real ``jupyter server`` (subprocess, cmbagent_jupyter
enabled) starts on it. A client process connects (and gets ``hello``), then sends
``subscribe`` with ``after_seq=0``; the figure is the time from sending that frame to
receiving the frame that holds the run's last event (``time.time()`` in the client
process), median of ``--repeat`` fresh connections after one warm-up. The client only
locates seqs with ``str.find`` on the way in (and checks they are contiguous).

The client's parse cost is reported separately: the CPU time (``time.process_time``, so
that other load on the machine does not inflate it) of ``orjson.loads`` of every frame
it received, median of 3, in one process, garbage collector on (as in a client); the
product client's ``RunFollower.on_events`` (cursor checks) on top of it is on stderr.

Baseline: ``_baseline_ws.py replay``, a plain Tornado server that reads the same rows
from the same file with ``sqlite3`` and sends them one frame per event; same client,
same clock, same parse measurement.

    python benchmarks/server_replay.py [--events 100000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import time

import orjson

import _common
from _common import bench_dir, emit, note, open_store, progress_workflow, run_to_completion, wait_stopped
from _fleet import Fleet
from _probes import Profiler
from _servers import BaselineServer, JupyterServer
from _stats import delivery_summary

TARGET_S = 0.5


def replay_once(url: str, headers, run_id: str, last: int, keep: bool, server=None) -> tuple[float, list]:
    fleet = Fleet(url, headers, run_id, 1, 1, after_seq=0, keep=keep, expect=last, defer_subscribe=True)
    try:
        fleet.wait_ready(120, kind="connected")
        cpu = server.cpu_seconds() if server else 0.0
        fleet.start_subscribe()
        if not fleet.wait_done(120):
            note("WARNING: the last event did not arrive within 120 s")
        if server:
            note(f"  server CPU for the replay: {server.cpu_seconds() - cpu:.3f} s")
        res = fleet.stop(None)
    finally:
        fleet.kill()
    summary = delivery_summary(res["socks"], last)
    if summary["gaps"] or summary["dups"] or summary["bad"] or summary["resets"] or summary["complete"] != 1:
        note(f"WARNING: delivery anomalies {summary}")
    sock = res["socks"][0]
    return sock["last_t"] - res["t_sub"][0], sock.get("raw", [])


def parse_cost(frames: list, run_id: str) -> tuple[float, float]:
    """(orjson.loads of every frame, RunFollower.on_events of every events frame), seconds."""
    from cmbagent_jupyter.client import RunFollower

    parse, wall = [], []
    for _ in range(3):
        msgs = None
        t, c = time.perf_counter(), time.process_time()
        msgs = [orjson.loads(f) for f in frames]
        parse.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
    events = [m["events"] for m in msgs if m.get("type") == "events"]
    follow = []
    for _ in range(3):
        f = RunFollower(run_id, after_seq=0)
        c = time.process_time()
        for evs in events:
            f.on_events(evs)
        follow.append(time.process_time() - c)
    note(f"  parse wall time {statistics.median(wall):.3f} s (CPU {statistics.median(parse):.3f} s)")
    return statistics.median(parse), statistics.median(follow)


def measure(name: str, url: str, headers, run_id: str, last: int, repeat: int, server=None) -> tuple[float, float]:
    replay_once(url, headers, run_id, last, False)  # warm-up: page cache, first-connection costs
    times, frames = [], []
    for i in range(repeat):
        s, raw = replay_once(url, headers, run_id, last, keep=(i == 0), server=server)
        times.append(s)
        frames = frames or raw
    parse, follow = parse_cost(frames, run_id)
    note(f"{name}: {last} events in {len(frames)} frames ({sum(map(len, frames)) / 2**20:.1f} MiB);"
         f" subscribe -> last event {', '.join(f'{t:.3f}' for t in times)} s; client parse (orjson)"
         f" CPU {parse:.3f} s, + RunFollower.on_events CPU {follow:.3f} s")
    return statistics.median(times), parse


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5, help="replays per server; the median counts")
    args = p.parse_args()
    t_start = time.perf_counter()

    with bench_dir(args.dir) as d:
        db = os.path.join(d, "served.sqlite")
        store = open_store(db)
        run = run_to_completion(progress_workflow(args.events, name="replay"), store)
        wait_stopped(run)
        store.close()
        conn = sqlite3.connect(db)
        last = conn.execute("SELECT last_seq FROM runs WHERE id=?", (run.id,)).fetchone()[0]
        conn.close()

        server = JupyterServer(db, d)
        try:
            eng, eng_parse = measure("server", server.ws_url, server.headers, run.id, last, args.repeat, server)
            if args.profile:
                with Profiler(server.pid, True, f"server during {args.repeat} replays (not a figure)"):
                    for _ in range(args.repeat):
                        replay_once(server.ws_url, server.headers, run.id, last, False)
        finally:
            server.stop()
        base_srv = BaselineServer("replay", "--db", db)
        try:
            base, base_parse = measure("baseline", base_srv.ws_url, None, run.id, last, args.repeat)
        finally:
            base_srv.stop()

    n = f"{args.events // 1000}k"
    label = ("plain Tornado WebSocket server reading the same rows from the same SQLite file, one frame per "
             "event; same client")
    emit(f"server_replay.subscribe_to_last_event_s_{n}", eng, "s", label, base,
         f"<= {TARGET_S:g} s", eng <= TARGET_S)
    emit(f"server_replay.client_parse_cpu_s_{n}", eng_parse, "s",
         label + "; orjson.loads of every frame it sent", base_parse,
         f"info (separate from the transfer); transfer + parse <= {TARGET_S:g} s", eng + eng_parse <= TARGET_S)
    note(f"[server_replay.py] {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
