"""``ctx``: what a step's code uses to report progress and to cooperate with control."""

from __future__ import annotations

import math
import mimetypes
import os
import reprlib
from typing import Any, Callable, Iterable, Optional, Protocol

from .errors import WorkflowDefinitionError
from .events import as_json, escape_surrogates, loggable
from .output import current_mode
from .step import Step, definable, make_step


#: Tokens and money a single ``ctx.cost`` call may report: far beyond any real call (a
#: context window is ~10^6 tokens), and small enough that no run's totals can overflow
#: what JSON and its readers hold (64-bit integers, finite floats).
MAX_TOKENS = 10 ** 12
MAX_USD = 1e12
#: Integers every JSON reader (a browser's included) holds exactly.
MAX_SAFE_INT = 2 ** 53 - 1


class RunLink(Protocol):
    """The run, as a step's ``ctx`` reaches it: the run's executor (engine.executor) for a
    step running in its process, or, for a step on a Dask worker, engine.dask's link back
    to that executor. What ``ctx`` passes on has been checked (see ``StepContext``)."""

    run_id: str

    def record(self, etype: str, data: dict) -> None:
        """Record one event of the step (progress, a message, a cost...)."""

    def record_file(self, node_id: str, data: dict) -> None:
        """Record a file the step wrote (``file_created``, then ``file_updated``)."""

    def attempt_of(self, node_id: str) -> int:
        """The node's current attempt: 1, then 2 on the first retry, ..."""

    def checkpoint(self, node_id: str) -> None:
        """Wait while the run is paused; raise ``Cancelled`` when it is cancelled."""

    def request_approval(self, node_id: str, prompt: str) -> tuple[bool, Optional[str]]:
        """Block until a human answers: (approved, the reviewer's comment or None)."""

    def request_input(self, node_id: str, question: str, choices: Optional[list[str]]) -> str:
        """Block until a human answers ``question``: the answer's text."""

    def add_step(self, step: Step, by_node: str) -> None:
        """Add a step to the running workflow (WorkflowDefinitionError if it cannot be)."""


class StepContext:
    """Passed to a step as its ``ctx`` parameter. Every call records one event.

    ``run`` is how the step reaches its run (``RunLink``): the same calls whether the
    step runs in the executor's process or on a Dask worker.

    What a call reports is checked and made loggable here, in the step's own thread,
    before it reaches the run (see engine.events.loggable): a number that a typed field
    cannot hold (NaN, an infinity, out of range) raises ``ValueError`` (``TypeError`` for
    a value of the wrong kind) in the step and records nothing; text is recorded with
    any lone surrogate (e.g. an undecodable byte of a file name) written as a visible
    ``\\udcXX`` escape.
    """

    def __init__(self, run: RunLink, node_id: str):
        self._run = run
        self.node_id = node_id
        self.run_id = run.run_id

    @property
    def attempt(self) -> int:
        """1 on the first attempt, 2 on the first retry, ..."""
        return self._run.attempt_of(self.node_id)

    def _record(self, etype: str, data: dict[str, Any], where: str) -> None:
        self._run.record(etype, loggable(data, where))

    def progress(self, fraction: Optional[float] = None, message: Optional[str] = None) -> None:
        """Report progress in [0, 1] and/or a status line (``step_progress``)."""
        # The hot path of step code (a loop may call it a million times): what it records
        # is loggable by construction (a checked float; text with its lone surrogates
        # escaped; a node id, which its definition checked), so no second check.
        data: dict[str, Any] = {"node_id": self.node_id}
        if fraction is not None:
            if type(fraction) is not float or not 0.0 <= fraction <= 1.0:  # (NaN fails too)
                fraction = _number("ctx.progress", "fraction", fraction)
                if not 0.0 <= fraction <= 1.0:
                    raise ValueError(f"ctx.progress: fraction must be between 0 and 1, not {fraction}")
            data["progress"] = fraction
        if message is not None:
            if type(message) is not str or not message.isascii():
                message = escape_surrogates(str(message))
            data["message"] = message
        self._run.record("step_progress", data)

    def message(self, text: str, agent: str = "assistant", role: str = "assistant",
                recipient: Optional[str] = None) -> None:
        """An agent said something (``agent_message``), to ``recipient`` when given."""
        data = {"node_id": self.node_id, "agent": str(agent), "message": str(text), "role": str(role)}
        if recipient is not None:
            data["recipient"] = str(recipient)
        self._record("agent_message", data, "ctx.message")

    def thinking(self, text: str, agent: str = "assistant") -> None:
        """An agent's intermediate reasoning (``agent_thinking``)."""
        self._record("agent_thinking", {"node_id": self.node_id, "agent": str(agent),
                                        "content": str(text)}, "ctx.thinking")

    def tool_call(self, tool: str, arguments: Optional[dict] = None, result: Any = None,
                  agent: str = "assistant", error: Optional[str] = None) -> None:
        """An agent called a tool (``agent_tool_call``): its result, or ``error`` if it failed.

        ``arguments`` (a dict) and ``result`` are recorded as JSON, converted as
        ``engine.events.as_json`` says (numpy arrays, sets, dates, paths... become JSON;
        NaN and infinities null); a value with no JSON form raises ``TypeError``
        (``ValueError`` for an integer beyond 64 bits) and records nothing.
        """
        if arguments is not None and not isinstance(arguments, dict):
            raise TypeError(f"ctx.tool_call: arguments must be a dict, not {type(arguments).__name__}")
        data = {"node_id": self.node_id, "agent": str(agent), "tool": str(tool),
                "arguments": as_json(arguments or {}, "ctx.tool_call arguments"),
                "result": as_json(result, "ctx.tool_call result")}
        if error is not None:
            data["error"] = str(error)
        self._record("agent_tool_call", data, "ctx.tool_call")

    def cost(self, model: str, input_tokens: int = 0, output_tokens: int = 0, usd: float = 0.0,
             agent: Optional[str] = None) -> None:
        """Tokens and money spent (``cost_update``); totals add up per node and per run
        (and, in the run view, per model and per ``agent`` when given).

        Tokens are whole numbers in [0, MAX_TOKENS], ``usd`` a finite number in
        [0, MAX_USD]; anything else raises ``ValueError`` (``TypeError`` for what is no
        number) and records nothing.
        """
        data = {"node_id": self.node_id, "model": str(model),
                "input_tokens": _integer("ctx.cost", "input_tokens", input_tokens, 0, MAX_TOKENS),
                "output_tokens": _integer("ctx.cost", "output_tokens", output_tokens, 0, MAX_TOKENS),
                "usd": _number("ctx.cost", "usd", usd)}
        if not 0.0 <= data["usd"] <= MAX_USD:
            raise ValueError(f"ctx.cost: usd must be between 0 and {MAX_USD:g}, not {data['usd']}")
        if agent is not None:
            data["agent"] = str(agent)
        self._record("cost_update", data, "ctx.cost")

    def metric(self, name: str, value: float, step: Optional[int] = None,
               unit: Optional[str] = None) -> None:
        """A named number (``metric_update``), e.g. a chi-square or a loss.

        ``value`` must be finite (NaN and infinities raise ``ValueError``: the log and the
        browser hold numbers as JSON, which has neither); ``step`` a whole number within
        +-MAX_SAFE_INT.
        """
        data: dict[str, Any] = {"node_id": self.node_id, "name": str(name),
                                "value": _number("ctx.metric", "value", value)}
        if step is not None:
            data["step"] = _integer("ctx.metric", "step", step, -MAX_SAFE_INT, MAX_SAFE_INT)
        if unit is not None:
            data["unit"] = str(unit)
        self._record("metric_update", data, "ctx.metric")

    def file(self, path: str | bytes | os.PathLike, description: Optional[str] = None) -> str:
        """Record a file the step wrote (``file_created``, or ``file_updated`` the next times).

        Returns its absolute path, as a str that opens the file. A name that is not
        UTF-8 (undecodable bytes, e.g. given as a bytes path) is recorded with each such
        byte as a visible ``\\udcXX`` escape: the log holds text.
        """
        path = os.path.abspath(os.fsdecode(path))
        data: dict[str, Any] = {"node_id": self.node_id, "path": path}
        if os.path.exists(path):
            data["size"] = os.path.getsize(path)
        mime = mimetypes.guess_type(path)[0]
        if mime:
            data["mime"] = mime
        if description is not None:
            data["description"] = str(description)
        self._run.record_file(self.node_id, loggable(data, "ctx.file"))
        return path

    def checkpoint(self) -> None:
        """A safe point: wait here while the run is paused; raise ``Cancelled`` on cancel."""
        self._run.checkpoint(self.node_id)

    def approve(self, prompt: str) -> "Approval":
        """Ask a human; block until approved or rejected.

        Returns an ``Approval``: truthy when approved, falsy when rejected (``== True`` /
        ``== False`` as a bool), with the reviewer's text in ``.comment`` (None if none).
        Lone surrogates in ``prompt`` are escaped; a NUL character raises ``ValueError``
        (the store keeps prompts as text, which cannot hold it).
        """
        approved, comment = self._run.request_approval(self.node_id, _prompt("ctx.approve", prompt))
        return Approval(approved, comment)

    def ask(self, question: str, choices: Optional[Iterable[str]] = None) -> str:
        """Ask a human a question; block until answered, and return the answer's text.

        Free text, or, with ``choices``, one of them (an answer outside them is refused).
        While the question is open the step is ``waiting_approval`` and so is the run when
        nothing else runs: it waits on a human exactly as for ``ctx.approve``. Answered
        once, from anywhere: ``run.answer(text)``, the widget, the sidebar,
        ``cmbagent-jupyter watch``, or the ``answer`` command over WebSocket / REST.
        """
        question = _prompt("ctx.ask", question, "question")
        if choices is not None:
            choices = [_prompt("ctx.ask", c, "choice") for c in choices]
            if not choices:
                raise ValueError("ctx.ask: choices, when given, must not be empty")
        return self._run.request_input(self.node_id, question, choices)

    def add_step(self, fn: Callable[..., Any], deps: Iterable[str] = (), *, name: Optional[str] = None,
                 retries: int = 0, retry_delay: float = 0.5, label: str = "",
                 description: Optional[str] = None, capture_output: Optional[str] = None) -> str:
        """Add a step to the running workflow (``dag_updated``); returns its node id.

        ``capture_output``: as for ``@wf.step``; by default the adding step's own mode.

        Names, labels and descriptions define the DAG rather than report data: one with a
        lone surrogate (or a name with a NUL character) raises ``WorkflowDefinitionError``.
        """
        step = make_step(fn, name=name, deps=deps, retries=retries, retry_delay=retry_delay,
                         label=label, description=description,
                         capture_output=capture_output or current_mode())
        if "\x00" in step.id or not definable(step.spec()):
            raise WorkflowDefinitionError(
                f"ctx.add_step: step {escape_surrogates(step.id)!r}: names, labels and descriptions "
                "must be text without lone surrogates (and names without NUL characters)")
        self._run.add_step(step, by_node=self.node_id)
        return step.id

    def __repr__(self) -> str:
        return f"<StepContext run={self.run_id} node={self.node_id}>"


class Approval:
    """What ``ctx.approve`` returns: truthy if approved, with the reviewer's ``comment``."""

    __slots__ = ("approved", "comment")

    def __init__(self, approved: bool, comment: Optional[str] = None):
        self.approved = bool(approved)
        self.comment = comment

    def __bool__(self) -> bool:
        return self.approved

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Approval):
            return (self.approved, self.comment) == (other.approved, other.comment)
        if isinstance(other, bool):
            return self.approved is other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.approved)

    def __str__(self) -> str:  # as the bool it stands for
        return str(self.approved)

    def __repr__(self) -> str:
        return f"Approval(approved={self.approved}, comment={self.comment!r})"


def _prompt(where: str, text: Any, name: str = "prompt") -> str:
    """Text shown to a human: lone surrogates escaped; a NUL character raises ValueError."""
    text = escape_surrogates(str(text))
    if "\x00" in text:
        raise ValueError(f"{where}: the {name} contains a NUL character")
    return text


def _number(where: str, name: str, value: Any) -> float:
    """``value`` as a finite float, or ValueError (TypeError for what is not a number)."""
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a number, not {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: {name} must be a finite number, not {reprlib.repr(value)}")
    return number


def _integer(where: str, name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi], or ValueError (TypeError for what is not a number)."""
    try:
        number = int(value)
    except (OverflowError, ValueError):  # an infinity, NaN, or a str that is no integer
        raise ValueError(f"{where}: {name} must be a whole number, not {reprlib.repr(value)}") from None
    except TypeError:
        raise TypeError(f"{where}: {name} must be a whole number, not {type(value).__name__}") from None
    if not lo <= number <= hi:
        raise ValueError(f"{where}: {name} must be between {lo} and {hi}, not {reprlib.repr(number)}")
    return number
