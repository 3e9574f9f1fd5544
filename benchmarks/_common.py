"""What every benchmark shares: arguments, temp dirs, timing, profiling and the JSON line.

Each benchmark prints one JSON object per figure on stdout and nothing else there:

    {"figure", "value", "unit", "baseline", "baseline_value", "ratio", "target", "ok"}

``ratio`` is ``value / baseline_value``. Diagnostics (profiles, progress notes) go to
stderr. Baselines are measured in the same process run, in the same temp directory
(so on the same disk) as the figure they calibrate.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import multiprocessing as mp
import os
import pstats
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterator, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: How benchmarks start helper processes (writers, client fleets): fresh interpreters,
#: not forks of a parent that holds threads, a store and an event loop.
SPAWN = mp.get_context("spawn")

try:  # the installed (editable) engine, or whatever PYTHONPATH puts first
    import engine  # noqa: F401
except ImportError:  # a plain checkout: import it from the repository
    sys.path.insert(0, REPO)
    import engine  # noqa: F401

import orjson  # noqa: E402

from engine import Workflow, open_store  # noqa: E402,F401


# -- output --------------------------------------------------------------------------------


def emit(figure: str, value: float, unit: str, baseline: str, baseline_value: float,
         target: str, ok: bool, digits: int = 4) -> dict:
    """Print one figure as a JSON line on stdout (and return it)."""
    ratio = value / baseline_value if baseline_value else None
    line = {
        "figure": figure,
        "value": _round(value, digits),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": _round(baseline_value, digits),
        "ratio": None if ratio is None else _round(ratio, digits),
        "target": target,
        "ok": bool(ok),
    }
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()
    return line


def _round(x: float, digits: int) -> float:
    """``digits`` significant digits: JSON that reads well at any magnitude."""
    return float(f"{x:.{digits}g}")


def note(*parts: Any) -> None:
    """A diagnostic line on stderr (stdout is reserved for the JSON figures)."""
    print(*parts, file=sys.stderr, flush=True)


# -- arguments and places ------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dir", default=os.environ.get("BENCH_DIR"),
                   help="parent directory for the temp SQLite files (default: the system temp "
                        "dir, or $BENCH_DIR); the baseline uses the same one")
    p.add_argument("--profile", action="store_true",
                   help="profile the engine measurement (every thread) and print the hot spots "
                        "to stderr; figures measured under the profiler are slower")
    return p


@contextlib.contextmanager
def bench_dir(parent: Optional[str]) -> Iterator[str]:
    """A fresh temp directory (removed afterwards) for a benchmark's SQLite files.

    Notes the machine's load average on stderr on the way in and out: on a shared
    machine, figures taken under load are not comparable with quiet ones.
    """
    note_load("start")
    with tempfile.TemporaryDirectory(prefix="cmbagent-bench-", dir=parent) as d:
        yield d
    note_load("end")


def note_load(when: str) -> None:
    if hasattr(os, "getloadavg"):
        one, five, _ = os.getloadavg()
        note(f"[{os.path.basename(sys.argv[0])}] load average at {when}: {one:.2f} (1 min), "
             f"{five:.2f} (5 min) on {os.cpu_count()} CPUs")


def raw_connection(path: str) -> sqlite3.Connection:
    """A plain sqlite3 connection configured like the engine's store (WAL, synchronous=NORMAL)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def postgres_server():
    """A PostgreSQL server to benchmark on (tests/pg_cluster.py's ``PgServer``):
    ``$CMBAGENT_TEST_PG_URL``'s, else a throwaway local cluster with durable settings
    (fsync, synchronous_commit and full_page_writes on; the tests' own clusters turn them
    off). ``create_database()`` gives a fresh database's URL. Raises ``RuntimeError``
    saying how to get one when there is none."""
    sys.path.append(os.path.join(REPO, "tests"))
    import pg_cluster

    try:
        return pg_cluster.PgServer.get(fsync=True)
    except pg_cluster.Unavailable as exc:
        raise RuntimeError(f"{exc}. {pg_cluster.HOW_TO_ENABLE}") from exc


def postgres_settings(url: str) -> str:
    """What PostgreSQL figures were taken with, for their labels: version, host and the
    durability settings (``PostgreSQL 15.x on 127.0.0.1, fsync=on, synchronous_commit=on, ...``)."""
    import psycopg
    from urllib.parse import urlsplit

    with psycopg.connect(url) as conn:
        show = {k: conn.execute(f"SHOW {k}").fetchone()[0]
                for k in ("server_version", "fsync", "synchronous_commit", "full_page_writes",
                          "wal_sync_method")}
    version = show.pop("server_version").split()[0]
    return (f"PostgreSQL {version} on {urlsplit(url).hostname}, "
            + ", ".join(f"{k}={v}" for k, v in show.items()))


# -- timing --------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call."""
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of ``repeat`` calls (the first call included)."""
    return statistics.median(timed(fn)[0] for _ in range(repeat))


# -- workloads shared by several benchmarks ---------------------------------------------------


def progress_workflow(events: int, steps: int = 1, name: str = "bench-progress",
                      call: Optional[Callable[..., None]] = None):
    """A workflow of ``steps`` independent steps that together make ``events`` progress calls.

    Each step calls ``ctx.progress(fraction, message)`` in a loop, or ``call(fraction,
    message)`` when given (the no-op baseline).
    """
    wf = Workflow(name)
    per = [events // steps + (1 if i < events % steps else 0) for i in range(steps)]

    def make(count: int):
        def step(ctx):
            report = call or ctx.progress
            for i in range(count):
                report(i / count, "working")
        return step

    for i, count in enumerate(per):
        wf.step(f"emit{i}")(make(count))
    return wf


def run_to_completion(wf, store, timeout: float = 600.0):
    """Start ``wf`` on ``store``, wait until its completion is durable, check it completed."""
    run = wf.start(store=store)
    state = run.wait(timeout)
    if state != "completed":
        raise RuntimeError(f"benchmark run {run.id} ended {state.value}: {run.info().get('reason')}")
    return run


def wait_stopped(run, timeout: float = 30.0) -> None:
    """Wait for the run's executor thread to exit or go idle (after ``run.wait()``; a
    completed run stays held, idle, for re-runs), so that closing the store does not race
    its last writes."""
    from engine.runtime import local_executor

    ex = local_executor(run.id)
    deadline = time.monotonic() + timeout
    while ex is not None and not (ex.stopped.is_set() or ex.idle) and time.monotonic() < deadline:
        time.sleep(0.001)


# -- memory ----------------------------------------------------------------------------------


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


# -- profiling -------------------------------------------------------------------------------


class ThreadProfiler:
    """cProfile on the calling thread and on every thread started while it is active.

    The engine does its work on several threads (the step's worker, the run's executor
    thread, the journal's writer), which plain ``cProfile`` would not see. Times are
    each thread's CPU time (``time.thread_time``): a thread blocked on a lock, a queue,
    the GIL or the disk accrues none, so the totals show where CPU goes, not where
    wall time is spent waiting. A thread's
    profile is read only after that thread has finished (a live profiler must not be
    touched from another thread), so stop the engine's threads inside the block, e.g.
    by closing the store.
    """

    def __init__(self) -> None:
        self._threads: list[tuple[threading.Thread, cProfile.Profile, threading.Event]] = []
        self._lock = threading.Lock()
        self._orig_run = threading.Thread.run

    def __enter__(self) -> "ThreadProfiler":
        prof = self
        orig = self._orig_run

        def run(thread: threading.Thread) -> None:
            p, finished = cProfile.Profile(time.thread_time), threading.Event()
            with prof._lock:
                prof._threads.append((thread, p, finished))
            p.enable()
            try:
                orig(thread)
            finally:
                p.disable()
                finished.set()

        threading.Thread.run = run  # type: ignore[method-assign]
        self._main = cProfile.Profile(time.thread_time)
        self._main.enable()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._main.disable()
        threading.Thread.run = self._orig_run  # type: ignore[method-assign]

    def report(self, title: str, top: int = 30) -> None:
        """Print the hottest functions (by own time, then cumulative) to stderr."""
        out = io.StringIO()
        stats = pstats.Stats(self._main, stream=out)
        skipped = []
        with self._lock:
            threads = list(self._threads)
        for thread, p, finished in threads:
            if not finished.wait(5.0):
                skipped.append(thread.name)
                continue
            try:
                stats.add(p)
            except (TypeError, ValueError):  # a thread that recorded nothing
                continue
        stats.strip_dirs()
        out.write(f"\n===== profile: {title} ({len(threads) + 1 - len(skipped)} threads,"
                  f" CPU seconds per thread, summed) =====\n")
        if skipped:
            out.write(f"(still running, not included: {', '.join(skipped)})\n")
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        note(out.getvalue())


@contextlib.contextmanager
def maybe_profile(enabled: bool, title: str) -> Iterator[None]:
    if not enabled:
        yield
        return
    prof = ThreadProfiler()
    with prof:
        yield
    prof.report(title)
