"""Server replicas: commit -> client latency, 3 Jupyter servers on one PostgreSQL database.

``--replicas`` real ``jupyter server`` processes (cmbagent_jupyter enabled, each with
its own port, token and temp dirs) serve one PostgreSQL database: a throwaway local
cluster started by tests/pg_cluster.py with durable settings (fsync, synchronous_commit
and full_page_writes on), or ``$CMBAGENT_TEST_PG_URL``'s server; the labels carry its
version, host and settings. A separate process runs the engine on that database: one
step calling ``ctx.progress`` at ``--rate`` events/s for ``--seconds`` (each call is its
own commit at that rate), recording the wall time at which each commit returned.
``--clients`` sockets in ``--procs`` client processes (process i connects to replica
i mod ``--replicas``, so the sockets are spread evenly) subscribe first, then parse
every frame and check that seqs arrive contiguous.

Latency per (socket, event) = receipt - commit returned (``time.time()``, one machine):
the NOTIFY, the replica's wake-up, read, encode and send, and the client.

Baselines, in the same run, with the same clients, rate and duration: one server on a
fresh database of the same PostgreSQL (the baseline of the replicas' figures), and one
server on a SQLite file in the temp dir (the baseline of the single PostgreSQL server's
p99: what PostgreSQL itself costs).

Without PostgreSQL (no initdb, no ``$CMBAGENT_TEST_PG_URL``) it says so on stderr and
prints no figure.

    python benchmarks/server_replicas.py [--replicas 3] [--clients 30] [--rate 100] [--seconds 20]
                                         [--procs 3] [--profile]
"""

from __future__ import annotations

import os
import time

import _common
from _common import bench_dir, emit, note, postgres_server, postgres_settings
from _paced import paced_engine
from _servers import JupyterServer

P99_MS = 50.0


class Replicas:
    """Several ``JupyterServer``s as one for ``paced_engine``: client process i connects to
    server i mod n; CPU time and RSS are their sums; ``pid`` (what ``--profile`` records)
    is the first one's."""

    def __init__(self, db: str, workdir: str, n: int):
        self.servers: list[JupyterServer] = []
        try:
            for i in range(n):
                self.servers.append(JupyterServer(db, os.path.join(workdir, f"replica{i}")))
        except BaseException:
            self.stop()
            raise
        self.pid = self.servers[0].pid

    @property
    def ws_url(self) -> list[str]:
        return [s.ws_url for s in self.servers]

    @property
    def headers(self) -> list[dict]:
        return [s.headers for s in self.servers]

    def cpu_seconds(self) -> float:
        return sum(s.cpu_seconds() for s in self.servers)

    def rss(self) -> int:
        return sum(s.rss() for s in self.servers)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def measure(args, db: str, workdir: str, replicas: int, name: str) -> dict:
    """``paced_engine`` through ``replicas`` servers on ``db``, after a warm-up (a socket each)."""
    servers = Replicas(db, workdir, replicas)
    try:
        paced_engine(servers, db, replicas, replicas, args.rate, 1.0, 5.0, f"{name}: warm-up")
        stats = paced_engine(servers, db, args.clients, args.procs, args.rate, args.seconds, args.grace,
                             f"{name}, {args.clients} subscribers")
        if args.profile:
            paced_engine(servers, db, args.clients, args.procs, args.rate, min(args.seconds, 10.0), args.grace,
                         f"{name}: profiled run (not a figure; server {servers.pid} only)", profile=True)
    finally:
        servers.stop()
    return stats


def measure_pg(args, pg, workdir: str, replicas: int, name: str) -> dict:
    """``measure`` on a fresh database of ``pg``, dropped afterwards."""
    url = pg.create_database("cmbagent_bench")
    try:
        return measure(args, url, workdir, replicas, name)
    finally:
        pg.drop_database(url)


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--clients", type=int, default=30)
    p.add_argument("--rate", type=float, default=100.0, help="events per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--procs", type=int, default=3, help="client processes (process i -> replica i mod n)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds after the last commit for the last event to reach every socket")
    args = p.parse_args()
    t_start = time.perf_counter()
    try:
        pg = postgres_server()
    except RuntimeError as exc:
        note(f"[server_replicas.py] skipped, no PostgreSQL: {exc}")
        return 0
    if args.procs < args.replicas:
        note(f"--procs {args.procs} < --replicas {args.replicas}: some replicas serve no socket")

    with bench_dir(args.dir) as d:
        settings = postgres_settings(pg.admin_url)
        note(f"[server_replicas.py] {settings}")
        many = measure_pg(args, pg, os.path.join(d, "replicas"), args.replicas,
                          f"{args.replicas} replicas on PostgreSQL")
        one = measure_pg(args, pg, os.path.join(d, "single-pg"), 1, "1 server on PostgreSQL")
        lite = measure(args, os.path.join(d, "served.sqlite"), os.path.join(d, "single-sqlite"), 1,
                       "1 server on SQLite")

    tag = f"{args.replicas}replicas_{args.clients}subs_{args.rate:g}eps"
    clients = (f"{args.clients} sockets in {args.procs} client processes, {args.rate:g} events/s for "
               f"{args.seconds:g} s")
    target = f"<= {P99_MS:g} ms (the p99 target), every event delivered"
    for q in ("p50", "p95", "p99"):
        v = many["commit"][q]
        emit(f"server_replicas.commit_to_receipt_{q}_ms_{tag}", v, "ms",
             f"one jupyter server on a fresh database of the same PostgreSQL, same writer and {clients}; "
             f"PostgreSQL: {settings}",
             one["commit"][q], target, v <= P99_MS and many["commit"]["delivered"] == many["commit"]["expected"])
    v = one["commit"]["p99"]
    emit(f"server_replicas.commit_to_receipt_p99_ms_1server_postgres_{args.clients}subs_{args.rate:g}eps", v, "ms",
         f"one jupyter server on a SQLite file (WAL, synchronous=NORMAL), same writer and {clients}; "
         f"PostgreSQL: {settings}",
         lite["commit"]["p99"], target, v <= P99_MS and one["commit"]["delivered"] == one["commit"]["expected"])
    note(f"[server_replicas.py] {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
