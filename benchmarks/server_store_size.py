"""Server CPU per event vs events already in the store: a store-size sweep.

For each size in ``--sizes`` (default 10k, 1M, 10M stored events), a SQLite store holds
that many events of one finished run, then a real ``jupyter server`` on it streams
``--events`` new events of another run (a separate engine process looping
``ctx.progress``) to ``--clients`` sockets. The figure is the server process's CPU time
per streamed event (user + system, psutil) at each size; its baseline is the smallest
size, measured in the same run. Flat means the server reads only what is new: the
change poll and the event reads must cost nothing proportional to the store.

Big stores are made quickly in C, not event by event: a real finished run is recorded
by the engine, then its ``runs`` row is copied under a new id and that run is given
``size`` events by one ``INSERT INTO events ... SELECT`` over a recursive CTE counting
1..size (same row shape as the engine's ``step_progress`` events), in one transaction
with ``synchronous=OFF`` (about 1.5 s per million rows here).

    python benchmarks/server_store_size.py [--sizes 10000,1000000,10000000] [--events 50000] [--clients 10]
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import datetime, timezone

import _common
from _common import bench_dir, emit, note, open_store, progress_workflow, run_to_completion, wait_stopped
from _servers import JupyterServer
from server_memory import engine_run

TARGET_RATIO = 1.2

_FILL = """
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
INSERT INTO events(run_id, seq, id, type, ts, data)
SELECT :run, x, printf('%032x', x), 'step_progress', :ts,
       '{"node_id":"emit0","progress":' || (x * 1.0 / :n) || ',"message":"working"}'
FROM c
"""


def make_store(path: str, size: int) -> float:
    """A store at ``path`` holding ``size`` events of one finished run; seconds it took."""
    t = time.perf_counter()
    store = open_store(path)
    try:
        seed = run_to_completion(progress_workflow(10, name="seed"), store)
        wait_stopped(seed)
    finally:
        store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN IMMEDIATE")
        filler = "filler-" + os.urandom(6).hex()
        cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
        picks = ", ".join(
            {"id": ":run", "last_seq": ":n", "doc": "json_set(doc, '$.id', :run, '$.name', 'filler')"}.get(c, c)
            for c in cols)
        conn.execute(f"INSERT INTO runs({', '.join(cols)}) SELECT {picks} FROM runs WHERE id=:seed",
                     {"run": filler, "n": size, "seed": seed.id})
        ts = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        conn.execute(_FILL, {"n": size, "run": filler, "ts": ts})
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        got = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    if got < size:
        raise RuntimeError(f"store fill: {got} events, wanted {size}")
    return time.perf_counter() - t


def measure(d: str, size: int, args) -> float:
    """Server CPU seconds per streamed event on a store of ``size`` events."""
    db = os.path.join(d, f"store-{size}.sqlite")
    took = make_store(db, size)
    note(f"store of {size} events made in {took:.1f} s ({os.path.getsize(db) / 2**20:.0f} MiB)")
    server = JupyterServer(db, d)
    try:
        engine_run(server, db, 2_000, args.clients, args.procs, args.timeout, f"warm-up, {size} stored")
        idle0 = server.cpu_seconds()
        time.sleep(args.idle)
        idle = server.cpu_seconds() - idle0
        res = engine_run(server, db, args.events, args.clients, args.procs, args.timeout,
                         f"{size} stored events", profile=args.profile)
        cpu = res["cpu"]  # from the gate's opening to the last socket's last event
    finally:
        server.stop()
        os.remove(db)
    clean = res["done"] and not any(res["summary"][k] for k in ("gaps", "dups", "resets"))
    if not clean:
        raise RuntimeError(f"{size} stored events: delivery was not exact: {res['summary']}")
    note(f"{size} stored events: server CPU {1e6 * cpu / args.events:.0f} us/event while streaming; "
         f"idle {100 * idle / args.idle:.2f} % of a core")
    return cpu / args.events


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,1000000,10000000")
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--procs", type=int, default=1, help="client processes")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured at each size")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    t0 = time.perf_counter()
    with bench_dir(args.dir) as d:
        per = {size: measure(d, size, args) for size in sizes}
    base = per[sizes[0]]
    for size in sizes[1:]:
        emit(f"server_store_size.cpu_us_per_event_{size}_stored", 1e6 * per[size], "us/event",
             f"the same server and workload on a store of {sizes[0]} events, same run",
             1e6 * base, f"ratio <= {TARGET_RATIO} ({args.events} events to {args.clients} sockets)",
             per[size] / base <= TARGET_RATIO)
    note(f"[server_store_size.py] {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
