"""How an attempt's task and its runner talk (engine.dask's notes: "How worker-side
``ctx`` calls reach the log", "Answers and control"): the task's payload, the topic its
messages travel on, the names of its claim and answers, and the order its messages are
recorded in."""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Any, Iterator, Optional

from distributed import Client
from distributed.protocol import pickle as dask_pickle

from ..errors import EngineError

#: Results that pickle to at most this many bytes travel in the attempt's last message;
#: larger ones are fetched from the worker (a round trip more, no copy kept by the scheduler).
INLINE_RESULT_BYTES = 16 * 1024
#: How often a task waiting for an answer checks that Dask still wants it.
ANSWER_POLL_S = 2.0

#: The run's control Variable: what a task's ``ctx.checkpoint()`` does without asking.
GO, HOLD, STOP = "go", "hold", "stop"


def claim_name(token: str) -> str:
    return f"cmbagent-claim-{token}"


def answer_name(token: str, index: int) -> str:
    return f"cmbagent-answer-{token}-{index}"


def dump_exception(exc: BaseException) -> bytes:
    try:
        return dask_pickle.dumps(exc)
    except Exception:
        return dask_pickle.dumps(EngineError(f"{type(exc).__name__}: {exc}"))


class Payload:
    """One attempt, as shipped to the worker. Opaque to Dask, so it does not walk the inputs."""

    __slots__ = ("run_id", "token", "node_id", "attempt", "topic", "control", "key", "fn",
                 "filename", "kwargs", "wants_ctx", "capture_output")

    def __init__(self, **fields: Any):
        for name, value in fields.items():
            setattr(self, name, value)

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


class Channel:
    """The topic on which tasks send the messages of one Client's runs, routed by run."""

    _lock = threading.Lock()
    _by_client: dict[str, "Channel"] = {}

    @classmethod
    def of(cls, client: Client) -> "Channel":
        with cls._lock:
            channel = cls._by_client.get(client.id)
            if channel is None:
                channel = cls._by_client[client.id] = cls(client)
            return channel

    def __init__(self, client: Client):
        self.topic = f"cmbagent-steps-{client.id}"
        self.routes: dict[str, queue.SimpleQueue] = {}
        client.subscribe_topic(self.topic, self._deliver)

    def _deliver(self, event: tuple) -> None:
        # On the Client's event loop, in arrival order: hand over and return at once.
        msg = event[1]
        route = self.routes.get(msg[0])
        if route is not None:
            route.put(("msg", msg))

    @classmethod
    def forget(cls, client: Client) -> None:
        with cls._lock:
            cls._by_client.pop(client.id, None)


class Attempt:
    """One attempt of a step on its way through Dask."""

    __slots__ = ("token", "node_id", "number", "key", "step", "kwargs", "future", "next",
                 "early", "worker", "pid", "ended", "finishing", "recovered", "answers")

    def __init__(self, node_id: str, number: int, step: Any, kwargs: dict):
        self.token = uuid.uuid4().hex
        self.node_id, self.number, self.step, self.kwargs = node_id, number, step, kwargs
        self.key = f"cmbagent-{node_id}-{self.token}"
        self.future: Any = None
        self.next = 0  # index of the next message to record
        self.early: dict[int, tuple[str, Any]] = {}  # messages ahead of a gap
        self.worker: Optional[str] = None  # told with its first message: it has its claim
        self.pid: Optional[int] = None
        self.ended = False  # recorded (or dropped): nothing more from it is recorded
        self.finishing = False  # its "end" is recorded, its result being fetched
        self.recovered = False
        self.answers: list[str] = []

    def in_order(self, index: int, kind: str, body: Any) -> Iterator[tuple[int, str, Any]]:
        """The messages to record now, given one that arrived: none while a message before
        it is missing (it waits in ``early``), else it and those it was blocking, in
        index order, until the attempt ends. A message seen before is dropped."""
        if index != self.next:
            if index > self.next:
                self.early[index] = (kind, body)
            return
        while True:
            self.next += 1
            yield index, kind, body
            if self.ended or self.next not in self.early:
                return
            index = self.next
            kind, body = self.early.pop(index)
