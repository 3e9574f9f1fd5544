"""The task of one attempt, on a Dask worker: claim it, run the step with a ``ctx`` whose
calls travel back to the executor, report how it ended (engine.dask's notes)."""

from __future__ import annotations

import os
import threading
import types
from typing import Any, Optional

from distributed import Client, Event, MultiLock, Variable, get_client, get_worker
from distributed.protocol import pickle as dask_pickle

from ..context import StepContext
from ..errors import Cancelled, WorkerLost, error_info
from ..events import loggable
from ..output import capture
from .channel import ANSWER_POLL_S, GO, INLINE_RESULT_BYTES, STOP, Payload, answer_name, claim_name


def run_attempt(p: Payload) -> Any:
    """The Dask task of one attempt: claim it, run the step, report how it ended."""
    worker = get_worker()
    client = get_client()
    claim = MultiLock([claim_name(p.token)], client=client)
    if not claim.acquire(blocking=False):
        raise WorkerLost(f"Dask ran it again on {worker.address}, which was refused: the "
                         f"attempt had already started (on a worker since lost) or was revoked")
    link = WorkerLink(worker, client, p, claim.id)
    fn = p.fn
    code = getattr(fn, "__code__", None)
    if p.filename and getattr(code, "co_filename", None) == "<dynamic-code>":
        # Shipped by value (a notebook's or a test's function): cloudpickle dropped its
        # file name; put it back so that its traceback shows where and what failed.
        fn.__code__ = _with_filename(fn.__code__, p.filename)
    kwargs = dict(p.kwargs)
    if p.wants_ctx:
        kwargs["ctx"] = StepContext(link, p.node_id)
    try:
        with capture(p.capture_output, p.node_id, p.attempt, link.record_output):
            value = fn(**kwargs)
    except Cancelled:
        link.send("end", {"outcome": "cancelled"})
        return None
    except BaseException as exc:  # the step's own failure
        link.send("end", {"outcome": "error", "error": _step_error(exc)})
        return None
    try:
        blob = dask_pickle.dumps(value)
    except Exception as exc:
        err = TypeError(f"the result of step {p.node_id!r} cannot leave the Dask worker: it "
                        f"does not pickle ({type(exc).__name__}: {exc})")
        link.send("end", {"outcome": "error", "error": _step_error(err)})
        return None
    if len(blob) <= INLINE_RESULT_BYTES:
        link.send("end", {"outcome": "ok", "result": blob})
        return None
    link.send("end", {"outcome": "ok"})  # the executor fetches the value from this task
    return value


def _step_error(exc: BaseException) -> dict:
    """``error_info(exc)`` as the worker's stream can carry it: one unencodable string in
    a message would fail the worker's whole batch of messages (and its connection)."""
    return loggable(error_info(exc), "the step's error")


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_with_filename(c, filename) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


class WorkerLink:
    """What a StepContext on a worker talks to, in place of the executor (same calls)."""

    def __init__(self, worker: Any, client: Client, p: Payload, claim_id: str):
        self.run_id = p.run_id
        self._worker = worker
        self._client = client
        self._topic = p.topic
        self._token = p.token
        self._key = p.key
        self._attempt = p.attempt
        self._control = Variable(p.control, client)
        self._lock = threading.Lock()  # a step's own threads may share its ctx
        self._next = 0
        # Where the attempt runs and its claim, told with its first message (no extra one).
        self._start = {"worker": worker.address, "pid": os.getpid(), "claim": claim_id}

    def send(self, kind: str, body: Any) -> int:
        with self._lock:  # the index order is the stream order
            index = self._next
            self._next += 1
            msg = [self.run_id, self._token, index, kind, body]
            if index == 0:
                msg.append(self._start)
            self._worker.log_event(self._topic, msg)
        return index

    # the executor's calls, as StepContext makes them

    def record(self, etype: str, data: dict) -> None:
        self.send("event", [etype, data])  # checked by the StepContext, on this worker

    def record_output(self, data: dict) -> None:
        self.send("event", ["step_output", data])  # checked by engine.output, on this worker

    def record_file(self, node_id: str, data: dict) -> None:
        self.send("file", data)  # created or updated: the executor knows the node's files

    def attempt_of(self, node_id: str) -> int:
        return self._attempt

    def checkpoint(self, node_id: str) -> None:
        control = self._wait(self._control)
        if control == GO:
            return
        if control == STOP:
            raise Cancelled()
        self._ask("checkpoint", None)  # paused: the executor holds this step at its checkpoint

    def request_approval(self, node_id: str, prompt: str) -> tuple[bool, Optional[str]]:
        approved, comment = self._ask("approve", prompt)
        return bool(approved), comment

    def request_input(self, node_id: str, question: str, choices: Optional[list[str]]) -> str:
        return self._ask("ask", {"question": question, "choices": choices})

    def add_step(self, step: Any, by_node: str) -> None:
        self._ask("add_step", dask_pickle.dumps(step))

    # answers

    def _ask(self, kind: str, body: Any) -> Any:
        index = self.send(kind, body)
        name = answer_name(self._token, index)
        doorbell = Event(name, self._client)
        while not doorbell.wait(timeout=ANSWER_POLL_S):
            self._check_wanted()
        answer_var = Variable(name, self._client)
        answer = self._wait(answer_var)  # set before the doorbell rang
        answer_var.delete()
        doorbell.clear()  # and so forgotten by the scheduler
        if answer[0] == "ok":
            return answer[1]
        if answer[0] == "cancelled":
            raise Cancelled()
        raise dask_pickle.loads(answer[1])

    def _wait(self, var: Variable) -> Any:
        """The Variable's value, waiting for it to be set; Cancelled if Dask drops this task
        meanwhile (the executor stopped, or released the task)."""
        while True:
            try:
                return var.get(timeout=ANSWER_POLL_S)
            except TimeoutError:
                self._check_wanted()

    def _check_wanted(self) -> None:
        """Raise Cancelled if Dask no longer wants this task (the executor stopped, or
        released it)."""
        ts = self._worker.state.tasks.get(self._key)
        if ts is None or ts.state not in ("executing", "long-running"):
            raise Cancelled()
