"""The load: the engine writing, from a process of its own.

- ``Writer``: one workflow whose step waits for a gate, then calls ``ctx.progress`` N
  times (paced, or as fast as it can). It records the wall time at which each of its
  commits returned (``store.apply_commits`` wrapped in that process only), so latencies
  can be measured from commit.
- ``Replayer`` (with ``hold_back``): commits a finished run's held-back events again, in
  batches.
"""

from __future__ import annotations

import os
import sqlite3
import time
import traceback
from typing import Optional

from _common import SPAWN


def _writer_main(db_path: str, events: int, rate: float, gate, out, name: str, timeout: float) -> None:
    try:
        from _common import open_store, wait_stopped
        from engine import Workflow

        store = open_store(db_path)
        commits: list[tuple[int, int, float]] = []
        orig = store.apply_commits

        def timed_apply(cms):  # the commit returned: visible to every other process
            result = orig(cms)
            t = time.time()
            for cm in cms:
                if cm.events:
                    commits.append((cm.events[0]["seq"], cm.events[-1]["seq"], t))
            return result

        store.apply_commits = timed_apply
        wf = Workflow(name)

        @wf.step()
        def emit(ctx):
            out.put(("waiting", None))
            if not gate.wait(600):
                raise RuntimeError("gate never opened")
            t0 = time.time()
            for i in range(events):
                if rate:
                    wait = t0 + i / rate - time.time()
                    if wait > 0:
                        time.sleep(wait)
                ctx.progress(i / events, "working")
            return None

        run = wf.start(store=store)
        out.put(("run", run.id))
        state = run.wait(timeout)
        wait_stopped(run)
        cpu = os.times()
        out.put(("done", {"state": str(getattr(state, "value", state)), "commits": commits,
                          "cpu_s": cpu.user + cpu.system}))
        store.close()
    except BaseException:
        out.put(("error", traceback.format_exc()))


class Writer:
    """The engine in its own process; ``open_gate()`` starts the step's progress loop."""

    def __init__(self, db_path: str, events: int, rate: float = 0.0, name: str = "bench-server",
                 timeout: float = 600.0):
        self.gate = SPAWN.Event()
        self.q = SPAWN.Queue()
        self.proc = SPAWN.Process(target=_writer_main, args=(db_path, events, rate, self.gate, self.q, name,
                                                             timeout), daemon=True)
        self.proc.start()
        got = dict(self._expect(("run", "waiting"), 120) for _ in range(2))
        self.run_id = got["run"]
        self.gate_opened_at: Optional[float] = None

    def _expect(self, kinds, timeout: float):
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        kind_got, value = self.q.get(timeout=timeout)
        if kind_got == "error":
            raise RuntimeError("writer failed:\n" + value)
        if kind_got not in kinds:
            raise RuntimeError(f"writer: expected {kinds}, got {kind_got}")
        return kind_got, value

    def open_gate(self) -> None:
        self.gate_opened_at = time.time()
        self.gate.set()

    def result(self, timeout: float = 600.0) -> dict:
        out = self._expect("done", timeout)[1]
        self.proc.join(30)
        return out


def _replayer_main(db_path: str, run_id: str, after: int, last: int, batch: int, gate, out) -> None:
    try:
        from _common import raw_connection

        conn = raw_connection(db_path)
        conn.execute("PRAGMA busy_timeout=60000")
        out.put(("waiting", None))
        gate.wait(600)
        commits = []
        for a in range(after + 1, last + 1, batch):
            b = min(a + batch - 1, last)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO events(run_id, seq, id, type, ts, data) SELECT run_id, seq, id, type,"
                         " ts, data FROM held WHERE run_id=? AND seq BETWEEN ? AND ? ORDER BY seq",
                         (run_id, a, b))
            conn.execute("UPDATE runs SET last_seq=? WHERE id=?", (b, run_id))
            conn.execute("COMMIT")
            commits.append((a, b, time.time()))
        conn.close()
        out.put(("done", {"commits": commits}))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def hold_back(db_path: str, run_id: str) -> tuple[int, int]:
    """Move a finished run's events from its first ``step_progress`` on into table ``held``,
    as if they were not written yet; return ``(after, last)``: the seq the log now ends at
    and the seq it ended at."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS held(run_id TEXT, seq INTEGER, id TEXT, type TEXT, ts TEXT,"
                 " data TEXT)")
    conn.execute("CREATE INDEX IF NOT EXISTS held_run_seq ON held(run_id, seq)")
    after = conn.execute("SELECT MIN(seq) - 1 FROM events WHERE run_id=? AND type='step_progress'",
                         (run_id,)).fetchone()[0]
    last = conn.execute("SELECT last_seq FROM runs WHERE id=?", (run_id,)).fetchone()[0]
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO held SELECT run_id, seq, id, type, ts, data FROM events WHERE run_id=? AND seq>?",
                 (run_id, after))
    conn.execute("DELETE FROM events WHERE run_id=? AND seq>?", (run_id, after))
    conn.execute("UPDATE runs SET last_seq=? WHERE id=?", (after, run_id))
    conn.execute("COMMIT")
    conn.close()
    return after, last


class Replayer(Writer):
    """Commits a held-back run's events again (``hold_back``), ``batch`` rows per transaction,
    as fast as SQLite takes them, from its own process, once the gate opens."""

    def __init__(self, db_path: str, run_id: str, after: int, last: int, batch: int = 2000):
        self.gate = SPAWN.Event()
        self.q = SPAWN.Queue()
        self.proc = SPAWN.Process(target=_replayer_main, args=(db_path, run_id, after, last, batch, self.gate,
                                                               self.q), daemon=True)
        self.proc.start()
        self.run_id = run_id
        self._expect("waiting", 120)
        self.gate_opened_at = None
