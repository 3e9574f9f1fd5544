"""PostgreSQL event append vs SQLite: event_append.py's workload on both stores, one machine.

One writer: 100k ``ctx.progress`` calls from one step, events / (``wf.start()`` -> the run's
completion durable) (``event_append.append_rate``), on a fresh PostgreSQL database each
time and on a SQLite file (the engine's store: WAL, synchronous=NORMAL) in the temp dir,
alternating, median of ``--repeat``. PostgreSQL is a throwaway local cluster started by
tests/pg_cluster.py with durable settings (fsync, synchronous_commit and
full_page_writes on), or ``$CMBAGENT_TEST_PG_URL``'s server as it is configured; the
figure labels carry its version, host and settings. It is measured twice: as configured,
and on a database with ``synchronous_commit=off`` (commits return before their WAL is
flushed, as SQLite's synchronous=NORMAL in WAL mode does: a crash of the machine may
drop the last commits, never corrupt the store), which compares like with like.

Concurrent writers: ``--writers`` processes (default 4) each run their own chatty run (one
step looping ``ctx.progress`` ``--events / --writers`` times as fast as it can; the
steps wait on gates until all runs exist) on one store at once; aggregate events/s = all
progress events / (first gate opened -> last commit returned in any writer). PostgreSQL
(as configured, a fresh database) against one SQLite file, alternating, median of
``--repeat``.

Without PostgreSQL (no initdb, no ``$CMBAGENT_TEST_PG_URL``) it says so on stderr and
prints no figure.

    python benchmarks/pg_append.py [--events 100000] [--repeat 3] [--writers 4] [--profile]
"""

from __future__ import annotations

import os
import statistics

import psycopg

import _common
from _common import bench_dir, emit, maybe_profile, note, postgres_server, postgres_settings
from _load import Writer
from event_append import append_rate

TARGET_RATE = 50_000.0
TARGET_RATIO = 0.5
TARGET_CONCURRENT_RATIO = 1.0


def concurrent_rate(url_of, writers: int, events: int, tag: str) -> float:
    """Aggregate events/s of ``writers`` processes, each a run of ``events`` progress calls;
    writer i on the store ``url_of(i)`` (one store for all, or one per writer)."""
    procs = [Writer(url_of(i), events, 0.0, name=f"bench-writer-{tag}-{i}") for i in range(writers)]
    for w in procs:
        w.open_gate()
    outs = [w.result(600) for w in procs]
    t0 = min(w.gate_opened_at for w in procs)
    t1 = max(t for out in outs for _, _, t in out["commits"])
    states = {out["state"] for out in outs}
    if states != {"completed"}:
        raise RuntimeError(f"concurrent writers ended {states}")
    return writers * events / (t1 - t0)


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3, help="runs per side; the median counts")
    p.add_argument("--writers", type=int, default=4, help="processes writing at once (concurrent figure)")
    args = p.parse_args()
    try:
        pg = postgres_server()
    except RuntimeError as exc:
        note(f"[pg_append.py] skipped, no PostgreSQL: {exc}")
        return 0

    def database(synchronous_commit_off: bool = False) -> str:
        url = pg.create_database("cmbagent_bench")
        if synchronous_commit_off:  # for every later connection to this database
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" SET synchronous_commit = off')
        return url

    def pg_rate(events: int, synchronous_commit_off: bool = False) -> float:
        url = database(synchronous_commit_off)
        try:
            return append_rate(url, events)
        finally:
            pg.drop_database(url)

    with bench_dir(args.dir) as d:
        settings = postgres_settings(pg.admin_url)
        url = database(synchronous_commit_off=True)
        settings_off = postgres_settings(url)
        pg.drop_database(url)
        note(f"[pg_append.py] {settings}")
        append_rate(os.path.join(d, "warmup.sqlite"), 1_000)
        pg_rate(1_000)
        sqlite, pg_on, pg_off = [], [], []
        for i in range(args.repeat):  # alternate, so drift on a shared machine hits all
            sqlite.append(append_rate(os.path.join(d, f"engine-{i}.sqlite"), args.events))
            pg_on.append(pg_rate(args.events))
            pg_off.append(pg_rate(args.events, synchronous_commit_off=True))
            note(f"[pg_append.py] one writer, round {i}: SQLite {sqlite[-1]:.0f}, PostgreSQL {pg_on[-1]:.0f},"
                 f" PostgreSQL synchronous_commit=off {pg_off[-1]:.0f} events/s")
        base = statistics.median(sqlite)
        target = f">= {TARGET_RATE:.0f} events/s and ratio postgresql/sqlite >= {TARGET_RATIO}"
        for name, rates, pg_settings in (("progress_events_per_s", pg_on, settings),
                                         ("progress_events_per_s_synchronous_commit_off", pg_off, settings_off)):
            rate = statistics.median(rates)
            emit(f"pg_append.{name}", rate, "events/s",
                 f"the engine on a SQLite file (WAL, synchronous=NORMAL), same workload ({args.events} "
                 f"ctx.progress from one step), same machine; PostgreSQL: {pg_settings}",
                 base, target, rate >= TARGET_RATE and rate / base >= TARGET_RATIO)

        per = args.events // args.writers
        c_sqlite, c_pg = [], []
        for i in range(args.repeat):
            path = os.path.join(d, f"concurrent-{i}.sqlite")
            c_sqlite.append(concurrent_rate(lambda _: path, args.writers, per, f"sqlite{i}"))
            url = database()
            try:
                c_pg.append(concurrent_rate(lambda _: url, args.writers, per, f"pg{i}"))
            finally:
                pg.drop_database(url)
            note(f"[pg_append.py] {args.writers} writers x {per} events, round {i}: SQLite {c_sqlite[-1]:.0f},"
                 f" PostgreSQL {c_pg[-1]:.0f} events/s (aggregate)")
        rate, base = statistics.median(c_pg), statistics.median(c_sqlite)
        emit(f"pg_append.concurrent_{args.writers}writers_events_per_s", rate, "events/s",
             f"the same {args.writers} writer processes ({per} ctx.progress each, one run each, at once) on "
             f"one SQLite file (WAL, synchronous=NORMAL); aggregate events/s, gate opened -> last commit; "
             f"PostgreSQL: {settings}",
             base, f"ratio postgresql/sqlite >= {TARGET_CONCURRENT_RATIO}", rate / base >= TARGET_CONCURRENT_RATIO)

        if args.profile:
            url = database()
            try:
                with maybe_profile(True, f"engine on PostgreSQL, {args.events} ctx.progress calls in one step"):
                    append_rate(url, args.events)
            finally:
                pg.drop_database(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
