"""Wire protocol v1: the models of every WebSocket frame, and the schema generated from them.

Server and clients exchange JSON text frames, each an object with a ``type``. These
pydantic models are the single source of truth; ``GET cmbagent/api/schema`` serves
``wire_schema()``, and the TypeScript types are generated from it.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Literal, Optional, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from engine.events import AnyEvent
from engine.snapshot import EdgeInfo, Layout, NodeInfo, RunInfo
from engine import states
from engine.states import COMMAND_ACTIONS, WorkflowState

PROTOCOL_VERSION = 1

#: Error codes an ``error`` frame can carry.
ERROR_CODES = ("bad_json", "bad_frame", "unknown_type", "invalid", "unknown_run", "unknown_node",
               "internal")


#: An integer every JSON encoder can write and a JavaScript client can hold exactly.
SafeInt = Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1)]


def _require_type(schema: dict) -> None:
    # ``type`` has a default for convenience in Python, but every frame carries it.
    schema["required"] = ["type", *[r for r in schema.get("required", []) if r != "type"]]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_require_type)


# -- server -> client -----------------------------------------------------------------


class Hello(_Msg):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    server_id: str
    heartbeat_interval: float = Field(description="Seconds between client pings")
    root_dir: Optional[str] = Field(None, description="The Jupyter server's root directory: files "
                                                      "under it are served by its /files/ route")


class SnapshotMsg(_Msg):
    type: Literal["snapshot"] = "snapshot"
    run_id: str
    seq: int = Field(description="The state is as of this event; live events continue after it")
    run: RunInfo
    nodes: list[NodeInfo]
    edges: list[EdgeInfo]
    layout: Layout


class EventsMsg(_Msg):
    type: Literal["events"] = "events"
    run_id: str
    events: list[AnyEvent] = Field(description="Consecutive events in seq order; may be empty "
                                               "(the reply to a subscribe with nothing to replay)")


class Reset(_Msg):
    type: Literal["reset"] = "reset"
    run_id: str
    reason: str = Field(description="trimmed | ahead | malformed | slow_consumer")


class Runs(_Msg):
    type: Literal["runs"] = "runs"
    runs: list[RunInfo]


class RunChanged(_Msg):
    type: Literal["run_changed"] = "run_changed"
    run: RunInfo


class RunDeleted(_Msg):
    """The run was deleted (``store.delete_run``, REST ``DELETE``, ``cmbagent-jupyter runs rm``):
    sent to run-list subscribers and to the run's subscribers, whose subscription ends."""

    type: Literal["run_deleted"] = "run_deleted"
    run_id: str


class Ack(_Msg):
    type: Literal["ack"] = "ack"
    command_id: str
    ok: bool
    state: Optional[WorkflowState] = None
    error: Optional[str] = None
    code: Optional[str] = Field(None, description="Why a command was refused, machine-readable")


class Pong(_Msg):
    type: Literal["pong"] = "pong"
    id: Union[str, SafeInt, None] = None
    server_time: str


class Error(_Msg):
    type: Literal["error"] = "error"
    code: str
    message: str
    ref: Optional[str] = Field(None, description="The offending frame's command_id, id or run_id")


class Unsubscribed(_Msg):
    type: Literal["unsubscribed"] = "unsubscribed"
    run_id: Optional[str] = Field(None, description="The run; absent for the run list")


class StoreStatus(_Msg):
    """The run store stopped answering, or answers again (sent to every connection, and
    after hello while it does not answer). Meanwhile the socket stays open, pings are
    answered, and whatever needs the store waits; it all catches up, exactly, once the
    store answers."""

    type: Literal["store_status"] = "store_status"
    available: bool = Field(description="False: a store call has been waiting longer than the "
                                        "server's store_unavailable_after")
    since: str = Field(description="When the store stopped answering (available false) or "
                                   "answered again (true): ISO 8601 UTC")


ServerMessage = Annotated[
    Union[Hello, SnapshotMsg, EventsMsg, Reset, Runs, RunChanged, Ack, Pong, Error, Unsubscribed,
          StoreStatus, RunDeleted],
    Field(discriminator="type"),
]

# -- client -> server -------------------------------------------------------------------


class Subscribe(_Msg):
    type: Literal["subscribe"] = "subscribe"
    run_id: str
    after_seq: Optional[int] = Field(None, ge=0, description="Replay exactly the events after it")


class Unsubscribe(_Msg):
    type: Literal["unsubscribe"] = "unsubscribe"
    run_id: str


class SubscribeRuns(_Msg):
    type: Literal["subscribe_runs"] = "subscribe_runs"


class UnsubscribeRuns(_Msg):
    type: Literal["unsubscribe_runs"] = "unsubscribe_runs"


class Ping(_Msg):
    type: Literal["ping"] = "ping"
    id: Union[str, SafeInt, None] = None


class RequestState(_Msg):
    type: Literal["request_state"] = "request_state"
    run_id: str


class Command(_Msg):
    type: Literal["command"] = "command"
    command_id: str = Field(min_length=1, max_length=200)
    run_id: str
    action: Literal[COMMAND_ACTIONS]  # type: ignore[valid-type]
    node_id: Optional[str] = None
    payload: Optional[dict[str, Any]] = None

    @field_validator("payload")
    @classmethod
    def _storable(cls, payload):
        # The store writes the payload as JSON: no integers beyond 64 bits, no deep nesting.
        try:
            orjson.dumps(payload)
        except TypeError as exc:
            raise ValueError(f"payload cannot be stored as JSON: {exc}") from None
        return payload


ClientMessage = Annotated[
    Union[Subscribe, Unsubscribe, SubscribeRuns, UnsubscribeRuns, Ping, RequestState, Command],
    Field(discriminator="type"),
]
CLIENT_TYPES = {"subscribe", "unsubscribe", "subscribe_runs", "unsubscribe_runs", "ping",
                "request_state", "command"}

_server = TypeAdapter(ServerMessage)
_client = TypeAdapter(ClientMessage)
_command_body = TypeAdapter(Command)


class FrameError(Exception):
    """A client frame that cannot be acted on; becomes an ``error`` frame."""

    def __init__(self, code: str, message: str, ref: Optional[str] = None):
        super().__init__(message)
        self.code, self.message, self.ref = code, message, ref

    def frame(self) -> dict:
        out = {"type": "error", "code": self.code, "message": self.message}
        if self.ref is not None:
            out["ref"] = self.ref
        return out


def _ref(obj: dict) -> Optional[str]:
    for key in ("command_id", "id", "run_id"):
        value = obj.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)[:200]
    return None


def parse_client_frame(raw: str | bytes) -> BaseModel:
    """Parse one client frame, or raise FrameError saying exactly what is wrong.

    A subscribe whose ``after_seq`` is not a usable cursor still parses, with
    ``after_seq`` set to the string "malformed": the contract answers it with a reset.
    """
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError("bad_json", f"frame is not valid JSON: {exc}") from None
    except RecursionError:  # deeply nested arrays/objects: json's decoder recurses
        raise FrameError("bad_json", "frame is nested too deeply") from None
    if not isinstance(obj, dict):
        raise FrameError("bad_frame", f"frame must be a JSON object, not {type(obj).__name__}")
    ftype = obj.get("type")
    if not isinstance(ftype, str):
        raise FrameError("bad_frame", "frame has no string 'type'", _ref(obj))
    if ftype not in CLIENT_TYPES:
        raise FrameError("unknown_type", f"unknown frame type {ftype[:100]!r}; expected one of "
                         f"{', '.join(sorted(CLIENT_TYPES))}", _ref(obj))
    malformed_cursor = False
    if ftype == "subscribe" and "after_seq" in obj and obj["after_seq"] is not None:
        seq = obj["after_seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            malformed_cursor = True
            obj = {k: v for k, v in obj.items() if k != "after_seq"}
    try:
        msg = _client.validate_python(obj)
    except ValidationError as exc:
        raise FrameError("invalid", f"invalid {ftype} frame: {_describe(exc)}", _ref(obj)) from None
    if malformed_cursor:
        object.__setattr__(msg, "after_seq", "malformed")
    return msg


def parse_command_body(obj: Any, run_id: str) -> "Command":
    """Validate a REST command body (the WS command's fields, without ``type``)."""
    if not isinstance(obj, dict):
        raise FrameError("bad_frame", "the body must be a JSON object")
    obj = {**obj, "type": "command", "run_id": run_id}
    try:
        return _command_body.validate_python(obj)
    except ValidationError as exc:
        raise FrameError("invalid", f"invalid command: {_describe(exc)}", _ref(obj)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"] if p not in ("subscribe", "command")) or "frame"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validate_server_frame(frame: str | bytes) -> BaseModel:
    """Validate a frame the server sent (tests and clients use it)."""
    return _server.validate_json(frame)


def wire_schema() -> dict:
    """JSON Schema of the whole protocol: ``ServerMessage`` and ``ClientMessage``.

    ``x-states`` carries the state machine's public facts (``engine.states.contract()``:
    every state, the final and settled sets, the states each command is legal in), so
    clients read them from the schema instead of copying them; the front end's
    ``src/states.ts`` is generated from it.
    """
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema([], ref_template="#/$defs/{model}")
    server = _server.json_schema(ref_template="#/$defs/{model}")
    client = _client.json_schema(ref_template="#/$defs/{model}")
    all_defs = {**defs.get("$defs", {}), **server.pop("$defs", {}), **client.pop("$defs", {})}
    all_defs["ServerMessage"] = server
    all_defs["ClientMessage"] = client
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "cmbagent-jupyter wire protocol",
        "description": f"Protocol version {PROTOCOL_VERSION}. Every frame is a ServerMessage "
                       "(server to client) or a ClientMessage (client to server).",
        "protocol": PROTOCOL_VERSION,
        "oneOf": [{"$ref": "#/$defs/ServerMessage"}, {"$ref": "#/$defs/ClientMessage"}],
        "x-states": states.contract(),
        "$defs": all_defs,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["schema"]:
        print("usage: python -m cmbagent_jupyter.protocol schema", file=sys.stderr)
        return 2
    print(json.dumps(wire_schema(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
