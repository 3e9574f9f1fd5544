"""The durable event protocol: the envelope and one pydantic model per event type.

These models are the single source of truth for event shapes. The JSON Schema
(``python -m engine schema``) is generated from them, and the TypeScript
types of the front end are generated from that schema.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import to_jsonable_python

from .states import NodeState, WorkflowState


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- shared parts ----------------------------------------------------------------


class ErrorInfo(BaseModel):
    type: str = Field(description="Exception class name, or a reason code")
    message: str
    traceback: Optional[str] = None


class NodeSpec(BaseModel):
    id: str
    label: str
    description: str = ""
    deps: list[str] = Field(default_factory=list)
    retries: int = 0


class Edge(BaseModel):
    source: str
    target: str


# -- workflow transitions -----------------------------------------------------------


class WorkflowTransition(_Data):
    old_state: WorkflowState
    new_state: WorkflowState
    reason: Optional[str] = Field(None, description="Why, when not a user command")
    command_id: Optional[str] = Field(None, description="The command that caused it, if any")


class WorkflowStartedData(WorkflowTransition):
    pass


class WorkflowStateChangedData(WorkflowTransition):
    pass


class WorkflowPausedData(WorkflowTransition):
    pass


class WorkflowResumedData(WorkflowTransition):
    pass


class WorkflowCompletedData(WorkflowTransition):
    pass


class WorkflowFailedData(WorkflowTransition):
    failed_nodes: list[str] = Field(default_factory=list)


class WorkflowCancelledData(WorkflowTransition):
    pass


# -- node transitions ----------------------------------------------------------------


class NodeTransition(_Data):
    node_id: str
    old_status: NodeState
    new_status: NodeState
    attempt: int = Field(description="1 for the first attempt; 0 before any")
    reason: Optional[str] = None
    command_id: Optional[str] = None


class StepStartedData(NodeTransition):
    pass


class ResultInfo(BaseModel):
    """What a completion kept of its step's result (engine.results)."""

    stored: bool = Field(description="The result is in the store: any process can load it")
    size: Optional[int] = Field(None, description="Encoded size in bytes, when stored")
    codec: Optional[str] = Field(None, description="pickle or cloudpickle, when stored")
    error: Optional[str] = Field(None, description="Why it could not be stored")
    fingerprint: str = Field(description="Hash of the step's code that produced it")


class StepCompletedData(NodeTransition):
    result_preview: Optional[str] = Field(None, description="repr() of the result, shortened")
    result: Optional[ResultInfo] = Field(None, description="What was kept of the result (None: results not kept)")


class StepFailedData(NodeTransition):
    error: ErrorInfo


class StepRetryStartedData(NodeTransition):
    delay_s: float = 0.0
    error: Optional[ErrorInfo] = Field(None, description="The failure being retried")


class DagNodeStatusChangedData(NodeTransition):
    pass


class StepProgressData(_Data):
    node_id: str
    progress: Optional[float] = Field(None, ge=0.0, le=1.0)
    message: Optional[str] = None


# -- DAG --------------------------------------------------------------------------


class RunMeta(BaseModel):
    name: str
    description: str = ""
    owner: str = ""


class DagCreatedData(_Data):
    run: RunMeta = Field(description="Who and what the run is (recorded once, at seq 1)")
    nodes: list[NodeSpec]
    edges: list[Edge]


class DagUpdatedData(_Data):
    added_nodes: list[NodeSpec]
    added_edges: list[Edge]
    by_node: Optional[str] = Field(None, description="The step that added them")


# -- agents -------------------------------------------------------------------------


class AgentMessageData(_Data):
    node_id: str
    agent: str
    message: str
    role: str = "assistant"
    recipient: Optional[str] = Field(None, description="Who the message was sent to, when known")


class AgentThinkingData(_Data):
    node_id: str
    agent: str
    content: str


class AgentToolCallData(_Data):
    node_id: str
    agent: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error: Optional[str] = Field(None, description="Why the call failed (no result then)")


# -- approvals -------------------------------------------------------------------------


class ApprovalRequestedData(_Data):
    node_id: str
    approval_id: str
    prompt: str


class ApprovalReceivedData(_Data):
    node_id: str
    approval_id: str
    approved: bool
    comment: Optional[str] = None
    command_id: Optional[str] = None


class QuestionAskedData(_Data):
    node_id: str
    question_id: str
    question: str
    choices: Optional[list[str]] = Field(None, description="The answers allowed; free text when absent")


class QuestionAnsweredData(_Data):
    node_id: str
    question_id: str
    answer: str
    command_id: Optional[str] = None


# -- accounting, outputs, errors --------------------------------------------------------


class CostUpdateData(_Data):
    node_id: str
    model: str
    agent: Optional[str] = Field(None, description="The agent that spent it, when known")
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0


class MetricUpdateData(_Data):
    node_id: str
    name: str
    value: float
    step: Optional[int] = None
    unit: Optional[str] = None


class FileData(_Data):
    node_id: str
    path: str = Field(description="Absolute path on the machine that ran the step")
    size: Optional[int] = None
    mime: Optional[str] = None
    description: Optional[str] = None


class FileCreatedData(FileData):
    pass


class FileUpdatedData(FileData):
    pass


class OutputLine(BaseModel):
    stream: Literal["stdout", "stderr", "log", "warning", "dropped"] = Field(
        description="Where it was written; 'dropped' marks output over the step's budget")
    text: str = Field(description="One line, or consecutive lines of one stream joined by newlines "
                                  "(no trailing one); ANSI escapes kept as written")
    level: Optional[str] = Field(None, description="A log record's level, a warning's category")


class StepOutputData(_Data):
    node_id: str
    attempt: int = Field(description="The attempt that wrote it")
    lines: list[OutputLine] = Field(default_factory=list, description="In the order written")
    partial: Optional[OutputLine] = Field(
        None, description="The line being written (e.g. a progress bar), replaced by the next event's")
    dropped_lines: int = Field(0, description="Lines dropped since the previous event (over budget)")
    dropped_bytes: int = 0


class ErrorOccurredData(_Data):
    message: str
    code: str = Field(description="Machine-readable reason, e.g. executor_lost")
    node_id: Optional[str] = None


# -- durable work: a run continued by another process (wf.resume) --------------------------


class RunReopenedData(_Data):
    host: str = Field(description="Host of the process that continues the run")
    pid: int = Field(description="Its process id")
    rerun: dict[str, str] = Field(default_factory=dict,
                                  description="Steps that run again, with why (the others keep their results)")


EVENT_DATA_MODELS: dict[str, type[BaseModel]] = {
    "workflow_started": WorkflowStartedData,
    "workflow_state_changed": WorkflowStateChangedData,
    "workflow_paused": WorkflowPausedData,
    "workflow_resumed": WorkflowResumedData,
    "workflow_completed": WorkflowCompletedData,
    "workflow_failed": WorkflowFailedData,
    "workflow_cancelled": WorkflowCancelledData,
    "step_started": StepStartedData,
    "step_progress": StepProgressData,
    "step_completed": StepCompletedData,
    "step_failed": StepFailedData,
    "step_retry_started": StepRetryStartedData,
    "dag_created": DagCreatedData,
    "dag_updated": DagUpdatedData,
    "dag_node_status_changed": DagNodeStatusChangedData,
    "agent_message": AgentMessageData,
    "agent_thinking": AgentThinkingData,
    "agent_tool_call": AgentToolCallData,
    "approval_requested": ApprovalRequestedData,
    "approval_received": ApprovalReceivedData,
    "question_asked": QuestionAskedData,
    "question_answered": QuestionAnsweredData,
    "cost_update": CostUpdateData,
    "metric_update": MetricUpdateData,
    "file_created": FileCreatedData,
    "file_updated": FileUpdatedData,
    "error_occurred": ErrorOccurredData,
    "step_output": StepOutputData,
    "run_reopened": RunReopenedData,
}

EVENT_TYPES: tuple[str, ...] = tuple(EVENT_DATA_MODELS)
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


class Envelope(BaseModel):
    """The durable envelope every event travels in."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    seq: int = Field(ge=1, description="Per run: 1, 2, 3, ... with no gap")
    id: str = Field(description="UUID of this event")
    event_type: EventType
    timestamp: str = Field(description="ISO 8601, UTC, with offset")
    data: dict[str, Any]


def _typed_envelope(event_type: str, data_model: type[BaseModel]) -> type[BaseModel]:
    name = "".join(p.title() for p in event_type.split("_")) + "Event"
    return type(
        name,
        (Envelope,),
        {
            "__annotations__": {"event_type": Literal[event_type], "data": data_model},
            "__module__": __name__,
        },
    )


#: One envelope model per event type; ``event_type`` is the discriminator.
TYPED_ENVELOPES: dict[str, type[BaseModel]] = {
    t: _typed_envelope(t, m) for t, m in EVENT_DATA_MODELS.items()
}
for _model in TYPED_ENVELOPES.values():
    setattr(sys.modules[__name__], _model.__name__, _model)

AnyEvent = Annotated[Union[tuple(TYPED_ENVELOPES.values())], Field(discriminator="event_type")]
_event_list = TypeAdapter(list[AnyEvent])


_UUID_BATCH = 256
#: A batch of ids is made as one text: 36 characters and a newline each.
_UUID_STRIDE = 37
#: A random byte as a hex digit (its low 4 bits: uniform), or as the RFC 4122 variant
#: digit 8, 9, a or b (its low 2 bits).
_HEX_DIGIT = bytes(b"0123456789abcdef"[b & 15] for b in range(256))
_VARIANT_DIGIT = bytes(b"89ab"[b & 3] for b in range(256))
#: The fixed characters of a version 4 UUID (and the newline after it), by position.
_UUID_FIXED = tuple((pos, char * _UUID_BATCH) for pos, char in (
    (8, b"-"), (13, b"-"), (14, b"4"), (18, b"-"), (23, b"-"), (36, b"\n")))


#: Ids made and not handed out yet (``new_uuid``). A process forked from this one starts
#: with none of them.
_uuids: list[str] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_uuids.clear)


def new_uuid() -> str:
    """A random (version 4) UUID string. They are made ``_UUID_BATCH`` at a time from one
    urandom read (``_uuid_batch``): an id then costs one ``list.pop``, atomic without a
    lock."""
    try:
        return _uuids.pop()
    except IndexError:  # (two threads may refill at once: each pops from its own batch)
        ids = _uuid_batch()
        _uuids.extend(ids[1:])
        return ids[0]


def _uuid_batch() -> list[str]:
    # One random byte per character, made a hex digit; then the fixed characters put in
    # place at every id's positions at once (extended slices): no Python work per id.
    raw = os.urandom(_UUID_STRIDE * _UUID_BATCH)
    text = bytearray(raw.translate(_HEX_DIGIT))
    text[19::_UUID_STRIDE] = raw[19::_UUID_STRIDE].translate(_VARIANT_DIGIT)
    for pos, chars in _UUID_FIXED:
        text[pos::_UUID_STRIDE] = chars
    return text.decode("ascii").split()


#: (a second since the epoch, its ISO 8601 text up to the seconds): most timestamps fall
#: in the same second as the previous one, so only its microseconds are formatted.
_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """Now, in ISO 8601 UTC with microseconds and offset (``2025-01-31T12:00:00.000001+00:00``,
    as ``datetime.isoformat(timespec="microseconds")`` writes it)."""
    global _second
    s, ns = divmod(time.time_ns(), 1_000_000_000)
    second = _second
    if second[0] != s:
        second = _second = (s, datetime.fromtimestamp(s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{second[1]}.{ns // 1000:06d}+00:00"


def new_event(run_id: str, seq: int, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """An envelope as a plain dict (the wire form). ``data`` must already be valid."""
    return {
        "run_id": run_id,
        "seq": seq,
        "id": new_uuid(),
        "event_type": event_type,
        "timestamp": now_iso(),
        "data": data,
    }


# -- what the log can hold ------------------------------------------------------------------
# Event data is checked where it is recorded (in the step's own thread), never first on
# the journal's writer thread: a value the writer cannot encode would fail every run
# batched with it, and would already be in the run's in-memory view.

#: Integers JSON encoders (orjson) can write: 64 bits, signed or not.
_INT_RANGE = (-(2 ** 63), 2 ** 64 - 1)


def escape_surrogates(text: str) -> str:
    """``text``, with each lone surrogate written as a visible ``\\udcXX`` escape.

    Python holds an undecodable byte of a file name (``os.fsdecode``) as a lone
    surrogate, and strings may carry them from elsewhere too; UTF-8 (the log, the wire)
    cannot. Everything else is left as it is.
    """
    if text.isascii():  # O(1) in CPython: the common case costs nothing
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def loggable(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` as an event can record it: returned as is when JSON can encode it, else
    a copy with every lone surrogate escaped (``escape_surrogates``, keys too).

    A value JSON cannot hold at all raises, in the caller: ``ValueError`` for an
    integer beyond 64 bits, ``TypeError`` otherwise (a set, bytes, a non-str key...).
    ``where`` names the call in the message (e.g. ``"ctx.tool_call"``).
    """
    try:
        orjson.dumps(data)
        return data
    except TypeError:
        pass
    data = _escaped(data, 0)
    _dumps(data, where)
    return data


def as_json(value: Any, where: str) -> Any:
    """``value`` exactly as the log will hold it: plain JSON values, converted the way
    pydantic converts values to JSON (tuples and sets become lists, dates ISO strings,
    paths and decimals strings...), numpy arrays and numbers too, NaN and infinities
    null, non-str keys strings, lone surrogates escaped; raises like ``loggable`` for
    what has no JSON form."""
    try:
        return orjson.loads(_dumps(value, where, lenient=True))
    except TypeError:
        return orjson.loads(_dumps(_escaped(value, 0), where, lenient=True))


def _dumps(value: Any, where: str, lenient: bool = False) -> bytes:
    try:
        if lenient:
            return orjson.dumps(value, default=to_jsonable_python,
                                option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        return orjson.dumps(value)
    except TypeError as exc:
        if "Integer exceeds" in str(exc):
            raise ValueError(f"{where}: an integer is outside JSON's 64-bit range "
                             f"{_INT_RANGE[0]}..{_INT_RANGE[1]}") from None
        raise TypeError(f"{where}: the value cannot be recorded as JSON ({exc})") from None


def _escaped(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return escape_surrogates(value)
    if depth > 255:  # deeper than JSON encoders go (or a cycle): _dumps says so
        return value
    if isinstance(value, dict):
        return {escape_surrogates(k) if isinstance(k, str) else k: _escaped(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_escaped(v, depth + 1) for v in value]
    return value


def parse_events(raw_json_array: bytes) -> list[BaseModel]:
    """Parse a JSON array of envelopes into typed envelope models (one Rust pass)."""
    return _event_list.validate_json(raw_json_array)


def events_schema() -> dict[str, Any]:
    """JSON Schema of an event envelope, discriminated by ``event_type``."""
    return TypeAdapter(AnyEvent).json_schema(ref_template="#/$defs/{model}")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["schema"]:
        print("usage: python -m engine schema", file=sys.stderr)
        return 2
    sys.stdout.write(orjson.dumps(events_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
