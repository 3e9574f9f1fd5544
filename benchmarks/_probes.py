"""Watching a server process while it works: its RSS sampled in a thread (``RssSampler``),
its CPU profile (``Profiler``: py-spy, summarised on stderr)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from typing import Any, Optional

from _common import note


class RssSampler:
    """Samples a process's RSS every ``interval`` s in a thread: ``peak`` and ``samples``."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self._p = psutil.Process(pid)
        self.peak = self._p.memory_info().rss
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._interval = interval
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                rss = self._p.memory_info().rss
            except Exception:
                return
            self.samples.append((time.time(), rss))
            self.peak = max(self.peak, rss)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def py_spy() -> Optional[str]:
    """The py-spy executable: $PY_SPY, on PATH, or pip-installed under /tmp/pyspy."""
    for cand in (os.environ.get("PY_SPY"), shutil.which("py-spy"), "/tmp/pyspy/bin/py-spy"):
        if cand and os.path.exists(cand):
            return cand
    return None


class Profiler:
    """``py-spy record`` of a process (all threads, active samples only) while the block runs.

    Usage: ``with Profiler(pid, enabled, "title"): ...``; the summary goes to stderr: own
    (leaf) time per function, and inclusive time per function.
    """

    def __init__(self, pid: int, enabled: bool, title: str, rate: int = 200):
        self.pid, self.enabled, self.title, self.rate = pid, enabled, title, rate
        self.proc = None

    def __enter__(self) -> "Profiler":
        if not self.enabled:
            return self
        exe = py_spy()
        if exe is None:
            note("--profile: py-spy not found (pip install --target /tmp/pyspy py-spy, or set $PY_SPY)")
            self.enabled = False
            return self
        self.out = f"/tmp/pyspy-{self.pid}-{time.time_ns()}.txt"
        self.proc = subprocess.Popen([exe, "record", "--pid", str(self.pid), "--rate", str(self.rate),
                                      "--format", "raw", "-o", self.out,
                                      # native frames need py-spy to pause the process per sample
                                      *(["--native"] if os.environ.get("PY_SPY_NATIVE") else ["--nonblocking"])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # py-spy attaches
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled or self.proc is None:
            return
        self.proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            err = b""
        if not os.path.exists(self.out):
            note(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
            return
        note(summarise_raw(self.out, self.title))
        os.unlink(self.out)


def _fn(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, loc = frame.partition(" (")
    path = loc.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def summarise_raw(path: str, title: str, top: int = 25) -> str:
    own: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = [_fn(fr) for fr in stack.split(";") if fr and not fr.startswith("process ")
                      and not fr.startswith("thread ")]
            if not frames:
                continue
            total += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    lines = [f"\n===== py-spy: {title} ({total} active samples, all threads) ====="]
    lines.append("-- own time --")
    lines += [f"{100 * n / total:6.1f}%  {fr}" for fr, n in own.most_common(top)]
    lines.append("-- inclusive --")
    lines += [f"{100 * n / total:6.1f}%  {fr}" for fr, n in incl.most_common(top)]
    return "\n".join(lines)
