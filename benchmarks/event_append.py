"""Event append rate: 100k ``ctx.progress`` calls from one step, durably logged.

The engine's rate is events / (time from ``wf.start()`` on an open store to
``run.wait()`` returning, i.e. the run's completion being durable in the store: the
run's creation, its executor and its step's start count). The baseline writes the same
number of rows of the same shape (run_id, seq, uuid, event type, ISO timestamp, JSON
data; the engine's events-table layout and indexes) with plain ``sqlite3`` into a WAL
database (synchronous=NORMAL) in the same temp directory, making the uuid, timestamp
and JSON of each row as it goes, in transactions as large as the engine's journal
makes them at most (``engine.journal.BATCH_LIMIT``, 2,000 rows); its clock starts, as
the engine's, with the connection open and the table there. Each side's CPU time per
event (all of the process's threads) goes to stderr: steadier than wall time when the
machine is busy.

    python benchmarks/event_append.py [--events 100000] [--repeat 3] [--profile]
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from datetime import datetime, timezone

import orjson

import _common
from _common import (bench_dir, emit, maybe_profile, note, open_store, progress_workflow, raw_connection,
                     run_to_completion, wait_stopped)
from engine.journal import BATCH_LIMIT as BATCH

TARGET_RATE = 50_000.0
TARGET_RATIO = 0.8

_EVENTS_TABLE = """
CREATE TABLE events(
    gid INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,
    type TEXT NOT NULL, ts TEXT NOT NULL, data TEXT NOT NULL);
CREATE UNIQUE INDEX events_run_seq ON events(run_id, seq);
"""


def engine_rate(directory: str, tag: str, events: int) -> tuple[float, float]:
    """(events/s, CPU seconds of this process per event: every engine thread's)."""
    cpu = time.process_time()
    rate = append_rate(os.path.join(directory, f"engine-{tag}.sqlite"), events)
    return rate, (time.process_time() - cpu) / events


def append_rate(url: str, events: int) -> float:
    """events/s of ``events`` ctx.progress calls from one step on the store at ``url``
    (a SQLite file here; pg_append.py also passes PostgreSQL URLs)."""
    store = open_store(url)
    try:
        wf = progress_workflow(events)
        t = time.perf_counter()
        run = run_to_completion(wf, store)
        elapsed = time.perf_counter() - t
        wait_stopped(run)
        return events / elapsed
    finally:
        store.close()


def raw_rate(directory: str, tag: str, events: int) -> tuple[float, float]:
    """(rows/s, CPU seconds per row)."""
    conn = raw_connection(os.path.join(directory, f"raw-{tag}.sqlite"))
    conn.executescript(_EVENTS_TABLE)
    run_id = uuid.uuid4().hex
    t, cpu = time.perf_counter(), time.process_time()
    for start in range(0, events, BATCH):
        rows = [(run_id, seq, str(uuid.uuid4()), "step_progress",
                 datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                 orjson.dumps({"node_id": "emit0", "progress": seq / events,
                               "message": "working"}).decode())
                for seq in range(start + 1, min(start + BATCH, events) + 1)]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events(run_id, seq, id, type, ts, data) VALUES(?,?,?,?,?,?)",
                         rows)
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    conn.close()
    return events / elapsed, cpu / events


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3, help="runs per side; the median counts")
    args = p.parse_args()

    with bench_dir(args.dir) as d:
        engine_rate(d, "warmup", 1_000)
        engine, raw = [], []
        for i in range(args.repeat):  # alternate, so drift on a shared machine hits both
            engine.append(engine_rate(d, str(i), args.events))
            raw.append(raw_rate(d, str(i), args.events))
        rate, base = statistics.median(r for r, _ in engine), statistics.median(r for r, _ in raw)
        # CPU per event (every thread of the process) is steadier than wall time on a busy
        # machine: the engine's, and the baseline's, medians.
        cpu, base_cpu = statistics.median(c for _, c in engine), statistics.median(c for _, c in raw)
        note(f"CPU per event: engine {1e6 * cpu:.2f} us, raw sqlite3 {1e6 * base_cpu:.2f} us"
             f" (ratio raw/engine {base_cpu / cpu:.3f})")
        emit("event_append.progress_events_per_s", rate, "events/s",
             f"raw sqlite3 executemany, {BATCH} rows per transaction, WAL synchronous=NORMAL, "
             f"same row shape and disk, {args.events} rows",
             base, f">= {TARGET_RATE:.0f} events/s and ratio engine/raw >= {TARGET_RATIO}",
             rate >= TARGET_RATE and rate / base >= TARGET_RATIO)
        if args.profile:
            with maybe_profile(True, f"engine, {args.events} ctx.progress calls in one step"):
                engine_rate(d, "profile", args.events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
