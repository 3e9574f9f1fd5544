"""Step output: what a step prints, writes to ``sys.stdout`` / ``sys.stderr``, logs or
warns becomes ``step_output`` events of the attempt that produced it.

Routing is per context, never a global swap that steals another cell's output:
``sys.stdout`` and ``sys.stderr`` are wrapped once (``_Router``) and every write asks
the context variable ``_current`` whose output it is. Outside a step the variable is
unset and a write goes straight to the stream it always went to.

How a step's context reaches the code it runs:

- the step's own thread: ``capture()`` sets the variable around the step's body;
- threads the step starts: ``threading.Thread.start`` hands the starter's capture to
  the new thread (only that variable, not the whole context), so a thread started in a
  step reports as that step for as long as it runs;
- thread pools: ``ThreadPoolExecutor.submit`` runs each task in the submitter's
  capture (a pool's worker threads do not inherit one: a pool outlives the step that
  made it); ``asyncio`` tasks and ``asyncio.to_thread`` copy the context by themselves;
- Dask workers: the worker's task opens its own capture (engine.dask.worker), whose
  events travel back like the step's other reports.

Modes (``capture_output=``): ``"tee"`` records the output and still writes it where
it went before (the notebook cell), ``"capture"`` records it only, ``"off"`` leaves
output alone. Logging records are captured once, as records (with their level), at
``Logger.handle``: what a stream handler writes for them is shown (tee) but not
recorded a second time. Warnings are captured at ``warnings.showwarning``.

Lines are batched: a batch goes out every ``FLUSH_S`` seconds or sooner when
``BATCH_BYTES`` wait, from one flusher thread, so writing never waits for the run's
log. Each attempt has a budget, ``RATE_BYTES`` per second (a bucket of
``BURST_BYTES``) and ``TOTAL_BYTES`` in all; past it, output is counted and dropped,
and a ``dropped`` line says how much. A line written in pieces is one line; a carriage
return without a newline (a progress bar redrawing itself) keeps only the text after
it, sent as the attempt's ``partial`` line until the line ends. Output written to the
file descriptors directly (C code, subprocesses) is not seen.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import thread as _cf_thread
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from .events import loggable

MODES = ("tee", "capture", "off")
FLUSH_S = 0.2
BATCH_BYTES = 64 * 1024
#: Writers are granted the budget in blocks of this much (one lock and clock read per block).
GRANT_BYTES = 8 * 1024
#: A longer line is recorded in pieces of this many characters.
MAX_LINE = 8 * 1024
RATE_BYTES = 128 * 1024
BURST_BYTES = 512 * 1024
TOTAL_BYTES = 16 * 1024 * 1024
#: Output waiting for the flusher beyond this is dropped (the run's log is behind).
MAX_PENDING = 512 * 1024
#: While output is being dropped, a marker goes out at most this often.
MARKER_S = 1.0

log = logging.getLogger(__name__)

_current: contextvars.ContextVar[Optional["_Sink"]] = contextvars.ContextVar(
    "cmbagent_output", default=None)
#: Set while a logging record is being handled: what handlers write is not recorded again.
_muted: contextvars.ContextVar[bool] = contextvars.ContextVar("cmbagent_output_muted", default=False)


def check_mode(mode: Any, where: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{where}: capture_output must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def current_mode() -> str:
    """The capture mode of the code running now ("off" outside a capturing step)."""
    sink = _current.get()
    return "off" if sink is None else ("tee" if sink.tee else "capture")


def _size(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


class _Sink:
    """One attempt's output: what its writers hand over, and what the flusher makes of it.

    Writers (any thread of the step) append raw chunks to a deque, paying for them from
    an allowance granted out of the budget in blocks (``GRANT_BYTES``, under the lock);
    past the budget they only count what they drop. Neither takes the lock per write
    (see ``_Router.write``), so a flood costs little. With several threads of one step
    flooding at once the drop counts may miss a few, and text a thread writes while the
    attempt ends may be lost. The flusher alone splits chunks into lines (``_lines``).
    """

    def __init__(self, node_id: str, attempt: int, tee: bool, emit: Callable[[dict], None]):
        self.node_id = node_id
        self.attempt = attempt
        self.tee = tee
        self.emit = emit
        self.lock = threading.Lock()
        self.emit_lock = threading.Lock()  # one batch at a time, in order
        # -- shared with the writers
        #: Text written to the current stream (a str: no tuple per write, a flood of small
        #: writes stays small in memory); (stream,): the stream changes; (stream, text,
        #: level): whole lines (a log record, a warning); (None, "drop", None): dropping
        #: starts; (None, {stream: line open?}, None): it ends.
        self.chunks: deque = deque()
        self.stream: Optional[str] = None  # the stream the last text chunk went to
        #: Bytes the writers may still append without asking (granted from the budget).
        self.allow = 0
        self.pending = 0
        self.tokens = float(BURST_BYTES)
        self.stamp = time.monotonic()
        self.recorded = 0
        self.dropping = False
        #: Counted by the writers, only ever increased (the flusher reads the difference:
        #: resetting them would race with the unlocked fast path).
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.reported = (0, 0)
        #: Per stream, while dropping: whether the last dropped text left a line open.
        self.open_line: dict[str, bool] = {}
        self.closed = False
        # -- the flusher's own
        self.reading: Optional[str] = None  # the stream of the text chunks being read
        self.partial: dict[str, str] = {}
        #: Streams whose current line was partly dropped: the rest of it is dropped too.
        self.broken: set[str] = set()
        self.partial_sent: Optional[tuple[str, str]] = None
        self.marked_at = 0.0
        self.lost_lines = 0
        self.lost_bytes = 0

    # -- writing (any thread of the step) ------------------------------------------------

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(BURST_BYTES), self.tokens + (now - self.stamp) * RATE_BYTES)
        self.stamp = now

    def take(self, stream: str, s: str, n: int, level: Optional[str] = None) -> bool:
        """Take ``s`` (``n`` bytes) when the allowance does not cover it (or whole lines,
        with their ``level``); False when the attempt is over (not recorded)."""
        with self.lock:
            if self.closed:
                return False
            if not self.dropping:
                if n > self.allow:  # ask the budget for more
                    self._refill()
                    grant = int(min(self.tokens, max(GRANT_BYTES, n), TOTAL_BYTES - self.recorded,
                                    MAX_PENDING - self.pending))
                    if grant > 0:
                        self.tokens -= grant
                        self.recorded += grant
                        self.pending += grant
                        self.allow += grant
                    if self.pending >= BATCH_BYTES:
                        _flusher.kick()
                if n <= self.allow:
                    self.allow -= n
                    if level is not None:
                        self.chunks.append((stream, s, level))
                    else:
                        self.text(stream, s)
                    return True
                self.dropping = True
                self.allow = 0
                self.chunks.append((None, "drop", None))
            self.drop(stream, s, level)
            return True

    def text(self, stream: str, s: str) -> None:
        """Append text written to ``stream`` (the allowance paid for it)."""
        if self.stream is not stream:
            self.stream = stream
            self.chunks.append((stream,))
        self.chunks.append(s)

    def drop(self, stream: str, s: str, level: Optional[str] = None) -> None:
        self.dropped_bytes += _size(s)
        if level is not None:  # whole lines
            self.dropped_lines += s.count("\n") + 1
            return
        self.dropped_lines += s.count("\n")
        if s:
            self.open_line[stream] = s[-1] != "\n"

    # -- sending (the flusher, or the step's thread at the end) -----------------------------

    def _lines(self, chunks: list, out: list[list]) -> None:
        """Turn chunks into finished lines (appended to ``out``); keep what is unfinished."""
        i, n = 0, len(chunks)
        while i < n:
            item = chunks[i]
            i += 1
            if item.__class__ is str:
                parts = [item]  # the run of text to one stream, joined at once
                while i < n and chunks[i].__class__ is str:
                    parts.append(chunks[i])
                    i += 1
                self._text(self.reading, "".join(parts), out)
            elif len(item) == 1:
                self.reading = item[0]
            elif item[0] is None:
                if item[1] == "drop":  # what was left of each line is dropped with what follows
                    for st, text in self.partial.items():
                        if text:
                            self.broken.add(st)
                            self.lost_bytes += _size(text)
                    self.partial = {}
                else:  # dropping ended: a stream left in mid-line drops the rest of that line
                    for st, open_ in item[1].items():
                        (self.broken.add if open_ else self.broken.discard)(st)
            else:
                stream, text, level = item
                _add(out, stream, text.split("\n"), level)

    def _text(self, stream: str, s: str, out: list[list]) -> None:
        """Text written to ``stream``: its finished lines to ``out``, the rest kept."""
        if stream in self.broken:  # the end of a line whose start was dropped
            end = s.find("\n")
            if end < 0:
                self.lost_bytes += _size(s)
                return
            self.broken.discard(stream)
            self.lost_lines += 1
            self.lost_bytes += _size(s[:end + 1])
            s = s[end + 1:]
        text = self.partial.get(stream, "") + s
        if "\n" in text:
            *done, text = text.split("\n")
            _add(out, stream, [_overwritten(line) for line in done] if "\r" in s else done)
        cut = text.rfind("\r", 0, len(text) - 1)
        if cut >= 0:
            text = text[cut + 1:]
        while len(text) > MAX_LINE:
            _add(out, stream, [text[:MAX_LINE]])
            text = text[MAX_LINE:]
        self.partial[stream] = text

    def flush(self, final: bool = False) -> None:
        with self.emit_lock:
            with self.lock:
                if self.closed:
                    return
                self.closed = final
                chunks = [self.chunks.popleft() for _ in range(len(self.chunks))]
                self.pending = self.allow
                if self.dropping and not final:
                    self._refill()
                    if self.tokens >= BATCH_BYTES and self.recorded + BATCH_BYTES <= TOTAL_BYTES:
                        self.dropping = False
                        chunks.append((None, dict(self.open_line), None))
                        self.open_line = {}
                counted = (self.dropped_lines, self.dropped_bytes)
                self.lost_lines += counted[0] - self.reported[0]
                self.lost_bytes += counted[1] - self.reported[1]
                self.reported = counted
                dropping = self.dropping
            lines: list[list] = []
            self._lines(chunks, lines)
            if final:
                for stream, text in self.partial.items():
                    if text:
                        _add(lines, stream, [_overwritten(text)])
                self.partial = {}
            now = time.monotonic()
            dropped = (0, 0)
            if (self.lost_lines or self.lost_bytes) and (final or not dropping
                                                         or now - self.marked_at >= MARKER_S):
                dropped = (self.lost_lines, self.lost_bytes)
                self.lost_lines = self.lost_bytes = 0
                self.marked_at = now
                _add(lines, "dropped", [_dropped_text(*dropped)])
            partial = None if final else next(((k, v) for k, v in self.partial.items() if v), None)
            partial_changed = partial != self.partial_sent
            self.partial_sent = partial
            if not lines and not partial_changed:
                return
            data: dict[str, Any] = {"node_id": self.node_id, "attempt": self.attempt,
                                    "lines": [_entry(*e) for e in lines]}
            if partial is not None:
                data["partial"] = {"stream": partial[0], "text": partial[1]}
            if dropped != (0, 0):
                data["dropped_lines"], data["dropped_bytes"] = dropped
            try:
                self.emit(loggable(data, "step output"))
            except Exception:
                log.debug("step %s: its output could not be recorded", self.node_id, exc_info=True)


def _add(out: list[list], stream: str, lines: list[str], level: Optional[str] = None) -> None:
    """Add lines to a batch: consecutive lines of one stream (and level) make one entry,
    sent joined by newlines, so 10,000 lines are a few objects, in memory and in the log."""
    if out and out[-1][0] == stream and out[-1][1] == level:
        out[-1][2].extend(lines)
    else:
        out.append([stream, level, list(lines)])


def _entry(stream: str, level: Optional[str], lines: list[str]) -> dict:
    entry = {"stream": stream, "text": "\n".join(lines)}
    if level is not None:
        entry["level"] = level
    return entry


def _overwritten(line: str) -> str:
    """A finished line as a terminal shows it: what follows its last carriage return."""
    if line.endswith("\r"):
        line = line[:-1]
    cut = line.rfind("\r")
    return line if cut < 0 else line[cut + 1:]


def _dropped_text(lines: int, size: int) -> str:
    amount = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB" if size >= 1e3 else f"{size} bytes"
    return (f"… {lines:,} lines ({amount}) of output dropped: over the step's output budget "
            f"({RATE_BYTES // 1024} kB/s, {TOTAL_BYTES // (1024 * 1024)} MB in all)")


class _Flusher:
    """One thread that sends every open sink's batch every FLUSH_S (or when kicked)."""

    def __init__(self) -> None:
        self._sinks: set[_Sink] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def add(self, sink: _Sink) -> None:
        with self._lock:
            self._sinks.add(sink)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="cmbagent-output-flusher")
                token = _current.set(None)  # the flusher is nobody's output
                try:
                    self._thread.start()
                finally:
                    _current.reset(token)

    def remove(self, sink: _Sink) -> None:
        with self._lock:
            self._sinks.discard(sink)

    def kick(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            with self._lock:
                sinks = list(self._sinks)
            for sink in sinks:
                sink.flush()


_flusher = _Flusher()


class _Router:
    """``sys.stdout`` / ``sys.stderr``: a write goes to the step it belongs to, if any."""

    def __init__(self, name: str, target: Any):
        self._name = name
        self._target = target

    def write(self, s: str) -> int:
        sink = _current.get()
        if sink is None or type(s) is not str:
            return self._target.write(s)
        if _muted.get():  # a logging handler's copy of a record already captured
            return self._target.write(s) if sink.tee else len(s)
        # The hot path, inlined (no lock, no call; see _Sink): within the allowance, append;
        # past the budget, count what is dropped; else ask the budget (sink.take).
        n = len(s) if s.isascii() else _size(s)
        if sink.closed:
            return self._target.write(s)
        if sink.dropping:
            sink.dropped_bytes += n
            sink.dropped_lines += s.count("\n")
            if s:
                sink.open_line[self._name] = s[-1] != "\n"
        elif n <= sink.allow:
            sink.allow -= n
            if sink.stream is not self._name:
                sink.text(self._name, s)
            else:
                sink.chunks.append(s)
        elif not sink.take(self._name, s, n):
            return self._target.write(s)  # the attempt just ended
        return self._target.write(s) if sink.tee else n

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def __repr__(self) -> str:
        return f"<cmbagent output router for {self._target!r}>"


# -- hooks: installed on first use, re-installed if something replaced them -------------------

_install_lock = threading.Lock()
_installed = False


def _install() -> None:
    global _installed
    with _install_lock:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None and not isinstance(stream, _Router):
                setattr(sys, name, _Router(name, stream))
        if getattr(warnings.showwarning, "_cmbagent", False) is False:
            warnings.showwarning = _showwarning(warnings.showwarning)
        if _installed:
            return
        _installed = True
        _patch_threads()
        _patch_logging()


def _showwarning(original: Callable) -> Callable:
    def showwarning(message, category, filename, lineno, file=None, line=None):
        sink = _current.get()
        if sink is None or file is not None:
            return original(message, category, filename, lineno, file, line)
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n")
        sink.take("warning", text, _size(text), category.__name__)
        if sink.tee:
            token = _muted.set(True)
            try:
                original(message, category, filename, lineno, file, line)
            finally:
                _muted.reset(token)

    showwarning._cmbagent = True  # type: ignore[attr-defined]
    return showwarning


def _patch_threads() -> None:
    start = threading.Thread.start
    submit = ThreadPoolExecutor.submit

    def start_in_step(self: threading.Thread) -> None:
        sink = _current.get()
        if sink is not None and getattr(self, "_target", None) is not _cf_thread._worker:
            run = self.run

            def run_as_step() -> None:
                _current.set(sink)
                run()

            self.run = run_as_step  # type: ignore[method-assign]
        start(self)

    def submit_in_context(self: ThreadPoolExecutor, fn: Callable, /, *args: Any, **kwargs: Any):
        sink = _current.get()
        if sink is None:
            return submit(self, fn, *args, **kwargs)
        return submit(self, _as_step, sink, fn, *args, **kwargs)

    threading.Thread.start = start_in_step  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = submit_in_context  # type: ignore[method-assign]


def _as_step(sink: _Sink, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    token = _current.set(sink)
    try:
        return fn(*args, **kwargs)
    finally:
        _current.reset(token)


def _patch_logging() -> None:
    handle = logging.Logger.handle
    formatter = logging.Formatter()

    def handle_in_step(self: logging.Logger, record: logging.LogRecord) -> None:
        sink = _current.get()
        if sink is None or self.disabled or _muted.get():
            return handle(self, record)
        try:
            text = record.getMessage()
        except Exception:  # a bad format: the handlers report it as they always do
            text = str(record.msg)
        if record.exc_info:
            text += "\n" + formatter.formatException(record.exc_info)
        if record.name != "root":
            text = f"{record.name}: {text}"
        sink.take("log", text, _size(text), record.levelname)
        token = _muted.set(True)
        try:
            handle(self, record)
        finally:
            _muted.reset(token)

    logging.Logger.handle = handle_in_step  # type: ignore[method-assign]


@contextmanager
def capture(mode: str, node_id: str, attempt: int, emit: Callable[[dict], None]) -> Iterator[None]:
    """Record the output of the code run inside (and of the threads it starts) as
    ``step_output`` data passed to ``emit``; everything is sent before this returns."""
    if mode == "off":
        yield
        return
    _install()
    sink = _Sink(node_id, attempt, mode == "tee", emit)
    _flusher.add(sink)
    token = _current.set(sink)
    try:
        yield
    finally:
        _current.reset(token)
        _flusher.remove(sink)
        sink.flush(final=True)
