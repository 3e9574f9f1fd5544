"""Readback: ``run.events(after_seq=N)`` returning 100k events.

A run records 100k ``ctx.progress`` events (plus its transitions); N is chosen so the
call returns exactly the last 100k. Two figures, median of several calls each:

- fetch: the call alone. ``run.events()`` returns a lazy ``EventList``: one query,
  rows kept as tuples, no model built yet.
- fetch+iterate: the call, then iterating the list and reading one field of every
  event, which builds every typed pydantic envelope model.

The baseline of both is the same plain ``sqlite3`` SELECT of the same rows
(``fetchall()`` on its own connection to the same file).

    python benchmarks/readback.py [--events 100000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import os
import statistics

import _common
from _common import (bench_dir, emit, maybe_profile, median_time, note, open_store, progress_workflow,
                     raw_connection, run_to_completion, timed, wait_stopped)

TARGET_S = 0.3


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5, help="calls per figure; the median counts")
    args = p.parse_args()
    n = args.events

    with bench_dir(args.dir) as d:
        path = os.path.join(d, "readback.sqlite")
        store = open_store(path)
        run = run_to_completion(progress_workflow(n), store)
        wait_stopped(run)
        last = store.bounds(run.id)[1]
        after = last - n
        note(f"run {run.id}: {last} events; reading seq > {after}")

        def fetch():
            evs = run.events(after_seq=after)
            assert len(evs) == n, len(evs)
            return evs

        def fetch_iterate():
            total = 0
            for ev in run.events(after_seq=after):
                total += ev.seq
            assert total == sum(range(after + 1, last + 1))

        raw = raw_connection(path)
        sql = "SELECT seq, id, type, ts, data FROM events WHERE run_id=? AND seq>? ORDER BY seq"

        def raw_select():
            rows = raw.execute(sql, (run.id, after)).fetchall()
            assert len(rows) == n
            return rows

        fetch()  # warm the connection, the statement cache and the page cache alike
        raw_select()
        t_fetch, t_iter, t_raw = [], [], []
        for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits all
            t_raw.append(timed(raw_select)[0])
            t_fetch.append(timed(fetch)[0])
            t_iter.append(timed(fetch_iterate)[0])
        base = statistics.median(t_raw)
        fetch_s, iter_s = statistics.median(t_fetch), statistics.median(t_iter)
        baseline = f"raw sqlite3 SELECT ... fetchall() of the same {n} rows, same file"
        emit("readback.fetch_100k", fetch_s, "s", baseline, base,
             f"<= {TARGET_S} s", fetch_s <= TARGET_S)
        emit("readback.fetch_iterate_100k", iter_s, "s", baseline, base,
             f"<= {TARGET_S} s", iter_s <= TARGET_S)
        dicts_s = median_time(lambda: run.events(after_seq=after).dicts(), args.repeat)
        note(f"for reference (not a figure): fetch + EventList.dicts() (plain wire dicts, "
             f"no models): {dicts_s:.3f} s")
        if args.profile:
            with maybe_profile(True, f"run.events(after_seq) of {n} events, fetch"):
                fetch()
            with maybe_profile(True, f"run.events(after_seq) of {n} events, fetch + iterate"):
                fetch_iterate()
        raw.close()
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
