"""Running step bodies on a Dask ``distributed`` cluster: ``wf.start(store, dask=...)``.

``dask`` is a ``distributed.Client`` (e.g. on a ``LocalCluster``) or a scheduler
address. Only the step *bodies* go to the cluster: the executor (state machine, lease,
the one writer of the run's log) stays in the process that started the run, exactly as
for local steps, and ``DaskRunner`` is the seam between the two (the executor's other
runner is its thread pool, ``engine.executor.ThreadRunner``). Each attempt of a step is
one Dask task, ``_run_attempt``, which calls the step with a ``StepContext`` whose calls
travel back to the executor; workers need this package installed (``engine``).

How worker-side ``ctx`` calls reach the log
-------------------------------------------
The task sends each call as a structured-log event, ``Worker.log_event(topic, msg)``, on
the topic of the executor's Client (``cmbagent-steps-<client id>``), to which that Client
subscribes (``Client.subscribe_topic``); ``msg`` is ``[run_id, attempt token, index,
kind, body]``. Why this channel rather than Pub/Sub, Queues or Variables:

* *Ordered.* A task runs on one worker, a worker's messages to the scheduler travel on
  its one batched stream, and the scheduler forwards each event on the Client's stream
  as it arrives: a step's events arrive in the order the step made them, and before
  the report that the task ended (which follows the same two streams).
* *Cheap and non-blocking for the step.* ``log_event`` only queues a message on the
  worker's stream (about 10 µs); events are batched on the way. A Queue or a Variable
  costs a scheduler round trip per event.
* *Nothing to run besides Dask.* The scheduler is the broker. (``distributed``'s
  Pub/Sub, best effort and peer to peer, is not in current releases.)
* *Recoverable.* The scheduler keeps the latest events of every topic
  (``Client.get_events``), so a message missing from the stream can be fetched again.
  One topic per Client, not per run: the scheduler never forgets a topic, so per-run
  topics would grow its memory with every run.

Exactness does not rest on the transport alone: the executor records an attempt's
messages strictly by index, drops those of an attempt that has ended, and records the
attempt's end (completion, failure) only after recording every message before it: the
last message, ``end``, says how the step ended. When the task has finished but messages
are missing, they are fetched again from the scheduler's topic log after
``RECOVER_AFTER_S``; if they are still missing ``EVENTS_GRACE_S`` later, the attempt
fails (``EventsLost``) and the step's retries apply.

Answers and control: ``ctx.checkpoint()`` first reads the run's control Variable
(``go`` / ``hold`` / ``stop``, set by the executor on every run state change: one
scheduler round trip, no executor involved): on ``go`` it returns, on ``stop`` it
raises ``Cancelled``. On ``hold`` (and for ``ctx.approve()`` and ``ctx.add_step()``,
always) the task sends a request in its ordered stream and waits for the answer: a
``distributed.Variable`` named after the attempt and the request's index, announced by a
``distributed.Event`` of the same name (the task waits on the Event, which times out
quietly every ``ANSWER_POLL_S`` to check that Dask still wants the task; a Variable's
get logs an error on the scheduler at each timeout). The executor answers by running
its own ``Executor.checkpoint`` / ``request_approval`` / ``add_step``, so pause, cancel,
approvals and added steps mean exactly what they mean for local steps (a paused step
waits at its checkpoint, holding its worker thread).

Exactly one run per attempt
---------------------------
Dask re-runs a task whose worker died on another worker; the step must not be run
again behind the executor's back. Each attempt has a claim, a ``distributed.MultiLock``
named after its token, that the task takes (without waiting) before calling the step.
A re-run of a started attempt finds the claim taken and raises ``WorkerLost`` without
running anything; the executor then records the attempt as failed with ``WorkerLost``
(naming the worker that was lost) and the step's ``retries`` decide what follows, as
for any failed attempt. ``KilledWorker`` (Dask giving up on the task) counts the same.
The task never releases its claim (a worker lost right after the step returned must
not lead to a re-run either); the runner releases the run's claims, with everything
else the run holds on the scheduler, when the run settles (completed, failed,
cancelled), *before* that is recorded: once ``run.wait()`` returns, the caller may close
its Client (``with Client(...) as client: wf.run(store, dask=client)``).
The same claim revokes tasks that have not started when the run is cancelled: the
executor takes it itself, and if it gets it the task can never start.

Results come back to the executor's process
-------------------------------------------
``run.result()``, result previews and the inputs of dependents need them there. A
result that pickles to at most ``INLINE_RESULT_BYTES`` rides in the ``end`` message; a
larger one is fetched with ``Future.result()``. Futures are released once their
attempt is recorded; dependents receive the values. Keeping results on the cluster
(futures passed to dependents) would save copies of big data, but Dask recomputes a
result lost with its worker: a finished step would run again (or, with the claim,
fail its dependents) after it was recorded as completed. Steps with big outputs should
write them to shared storage and return a reference (and ``ctx.file`` them).

Width, pause and cancel
-----------------------
A node is marked running when its task is submitted. ``max_workers`` defaults to no
limit (``DEFAULT_WIDTH``): every ready step is submitted at once, several in one graph,
and Dask's scheduler queues what its workers cannot take yet. Bounding it by the
cluster's threads would make "running" mean "on a thread", at the price of a round
trip through this process before each new task starts (a fan-out would run several
times slower than Dask itself). What a queued task must not do is start after a pause
or a cancel: the runner then takes the claims of the tasks that have not started; on
a pause their nodes pause as at a checkpoint before their first line (``running ->
paused``, resubmitted on resume), on a cancel they are cancelled. Tasks that have
started stop at their next checkpoint, as local steps do; a paused or waiting step
keeps its worker thread, as locally.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import types
import uuid
from typing import Any, Optional

from distributed import Client, Event, MultiLock, Variable, get_client, get_worker
from distributed.protocol import pickle as dask_pickle
from distributed.scheduler import KilledWorker

from . import states
from .context import StepContext
from .errors import Cancelled, EngineError, WorkerLost, error_info
from .events import loggable

logger = logging.getLogger(__name__)

#: Results that pickle to at most this many bytes travel in the attempt's last message;
#: larger ones are fetched from the worker (a round trip more, no copy kept by the scheduler).
INLINE_RESULT_BYTES = 16 * 1024
#: A finished task whose messages are not all recorded this long after: fetch them again.
RECOVER_AFTER_S = 1.0
#: ... and if they are still missing this long after that, the attempt fails (EventsLost).
EVENTS_GRACE_S = 10.0
#: Futures of recorded attempts are let go in bulk, this often: one message to the
#: scheduler (and to its workers) instead of one per step, which in a chain would
#: otherwise share the next step's batching window.
RELEASE_EVERY_S = 0.2
#: How often the runner looks at the state of its tasks' futures, to notice tasks that
#: failed outside the step (a lost worker, KilledWorker) or finished without their last
#: message. Cheaper than a done-callback per future (a coroutine and a thread hop each).
POLL_S = 0.1
#: Steps dispatched close together are submitted as one graph: up to this many, waiting
#: at most this long for more (one ``update_graph`` on the scheduler instead of many).
SUBMIT_BATCH = 512
SUBMIT_WAIT_S = 0.002
#: max_workers for Dask runs unless given: every ready step is submitted at once and
#: Dask's scheduler queues what its workers cannot take yet (see the module doc).
DEFAULT_WIDTH = 100_000
#: How often a task waiting for an answer checks that Dask still wants it.
ANSWER_POLL_S = 2.0
#: How long a settling run waits for the scheduler to release its claims (an unreachable
#: scheduler must not hold the run's executor for long).
RELEASE_TIMEOUT_S = 10.0

_GO, _HOLD, _STOP = "go", "hold", "stop"


class EventsLost(EngineError):
    """A step's attempt finished on a worker but some of its messages never arrived."""

    code = "events_lost"


def _claim_name(token: str) -> str:
    return f"cmbagent-claim-{token}"


def _answer_name(token: str, index: int) -> str:
    return f"cmbagent-answer-{token}-{index}"


def _dump_exception(exc: BaseException) -> bytes:
    try:
        return dask_pickle.dumps(exc)
    except Exception:
        return dask_pickle.dumps(EngineError(f"{type(exc).__name__}: {exc}"))


# -- the worker side ------------------------------------------------------------------------


class _Payload:
    """One attempt, as shipped to the worker. Opaque to Dask, so it does not walk the inputs."""

    __slots__ = ("run_id", "token", "node_id", "attempt", "topic", "control", "key", "fn",
                 "filename", "kwargs", "wants_ctx")

    def __init__(self, **fields: Any):
        for name, value in fields.items():
            setattr(self, name, value)

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def _run_attempt(p: _Payload) -> Any:
    """The Dask task of one attempt: claim it, run the step, report how it ended."""
    worker = get_worker()
    client = get_client()
    claim = MultiLock([_claim_name(p.token)], client=client)
    if not claim.acquire(blocking=False):
        raise WorkerLost(f"Dask ran it again on {worker.address}, which was refused: the "
                         f"attempt had already started (on a worker since lost) or was revoked")
    link = _WorkerLink(worker, client, p, claim.id)
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


class _WorkerLink:
    """What a StepContext on a worker talks to, in place of the executor (same calls)."""

    def __init__(self, worker: Any, client: Client, p: _Payload, claim_id: str):
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

    def record_file(self, node_id: str, data: dict) -> None:
        self.send("file", data)  # created or updated: the executor knows the node's files

    def attempt_of(self, node_id: str) -> int:
        return self._attempt

    def checkpoint(self, node_id: str) -> None:
        control = self._wait(self._control)
        if control == _GO:
            return
        if control == _STOP:
            raise Cancelled()
        self._ask("checkpoint", None)  # paused: the executor holds this step at its checkpoint

    def request_approval(self, node_id: str, prompt: str) -> bool:
        return bool(self._ask("approve", prompt))

    def add_step(self, step: Any, by_node: str) -> None:
        self._ask("add_step", dask_pickle.dumps(step))

    # answers

    def _ask(self, kind: str, body: Any) -> Any:
        index = self.send(kind, body)
        name = _answer_name(self._token, index)
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


# -- the executor side ----------------------------------------------------------------------


class _Channel:
    """The topic on which tasks send the messages of one Client's runs, routed by run."""

    _lock = threading.Lock()
    _by_client: dict[str, "_Channel"] = {}

    @classmethod
    def of(cls, client: Client) -> "_Channel":
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


def _connect(dask: Any) -> tuple[Client, bool]:
    """``(client, owned)`` for what ``dask=`` was given."""
    if isinstance(dask, Client):
        if dask.asynchronous:
            raise EngineError("dask=: an asynchronous distributed.Client cannot run steps; "
                              "pass a synchronous Client or the scheduler's address")
        if dask.status != "running":
            raise EngineError(f"dask=: the distributed.Client is {dask.status}, not running")
        return dask, False
    address = getattr(dask, "scheduler_address", dask)  # a Cluster object, or an address
    if not isinstance(address, str):
        raise TypeError(f"dask= takes a distributed.Client or a scheduler address, not {dask!r}")
    try:
        return Client(address, set_as_default=False), True
    except (OSError, TimeoutError) as exc:
        raise EngineError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc


class _Attempt:
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

    def again(self) -> "_Attempt":
        """The same attempt as a new task (after it was held back by a pause)."""
        return _Attempt(self.node_id, self.number, self.step, self.kwargs)


class DaskRunner:
    """Runs step bodies as Dask tasks; records what they send, in order (see module doc).

    The executor calls ``submit``, ``state_changed`` and ``shutdown`` under its lock:
    they only queue work for the runner's own thread (the pump), which talks to Dask,
    records the tasks' messages through the executor and ends attempts with
    ``Executor._end_attempt``. Answers that block (a paused checkpoint, an approval)
    are given from a thread each. The one call that talks to the scheduler itself is
    ``release_cluster``, once per settling of the run.

    Steps dispatched together (a fan-out, or several completions at once) go to the
    scheduler as one graph. A pause holds back the tasks that have not started yet:
    the runner takes their claims, and their nodes pause as at a checkpoint before
    their first line (``running -> paused``, resubmitted on resume). A cancel does the
    same and cancels them. Tasks that have started stop at their next checkpoint.
    """

    def __init__(self, dask: Any, run_id: str):
        self.client, self._owned = _connect(dask)
        self.run_id = run_id
        self.ex: Any = None
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._attempts: dict[str, _Attempt] = {}  # submitted to Dask, not yet let go
        self._unsent: list[_Attempt] = []  # dispatched, to be submitted in one graph
        self._unsent_since = 0.0
        self._parked: list[_Attempt] = []  # held back by a pause (their nodes are paused)
        self._deadlines: dict[str, float] = {}
        self._claims: list[str] = []  # ids of the claims taken (by tasks or by this runner)
        self._spent: list[Any] = []  # futures of recorded attempts, to release (RELEASE_EVERY_S)
        self._release_at = 0.0
        self._poll_at = 0.0
        self._control_value = _GO
        self._channel: Optional[_Channel] = None
        try:
            self._channel = _Channel.of(self.client)
            self._channel.routes[run_id] = self._q
            self._control = Variable(f"cmbagent-control-{run_id}", self.client)
            self._control.set(_GO)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._pump, name=f"cmbagent-dask-{run_id[:8]}",
                                        daemon=True)

    def default_width(self) -> int:
        """How many nodes may be running at once by default: no practical limit."""
        return DEFAULT_WIDTH

    def attach(self, ex: Any) -> "DaskRunner":
        self.ex = ex
        self._thread.start()
        return self

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the runner has cleaned up after its executor stopped; True if it has."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        """Let go of Dask without a run (the run could not be created)."""
        if self._channel is not None:
            self._channel.routes.pop(self.run_id, None)
        if self._owned:
            _Channel.forget(self.client)
            self.client.close()

    # -- the runner interface (under the executor's lock: queue, never block) ----------------

    def submit(self, node_id: str) -> None:
        ex = self.ex
        step = ex.steps[node_id]
        kwargs = {d: ex.results[d] for d in step.inputs}
        self._q.put(("submit", node_id, ex.view.nodes[node_id]["attempt"], step, kwargs))

    def state_changed(self, state: str) -> None:
        self._q.put(("state", state))

    def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
        self._q.put(("stop",))

    # -- the pump ------------------------------------------------------------------------------

    def _pump(self) -> None:
        while True:
            now = time.monotonic()
            due = self._due()
            if due is not None and due <= now:  # due, even while messages keep coming
                self._safely(self._on_timers)
                continue
            if self._unsent and (len(self._unsent) >= SUBMIT_BATCH
                                 or now - self._unsent_since >= SUBMIT_WAIT_S):
                self._safely(self._flush)
                continue
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                if self._unsent:  # nothing else to do first: submit what was dispatched
                    self._safely(self._flush)
                    continue
                try:
                    item = self._q.get(timeout=None if due is None else due - now)
                except queue.Empty:
                    continue
            if item[0] == "stop":
                self._safely(self._stop)
                return
            self._safely(getattr(self, "_on_" + item[0]), *item[1:])

    def _safely(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            logger.exception("run %s: the Dask runner failed in %s", self.run_id, fn.__name__)

    def _due(self) -> Optional[float]:
        times = list(self._deadlines.values())
        if self._spent:
            times.append(self._release_at)
        if self._attempts:
            times.append(self._poll_at)
        return min(times) if times else None

    def _on_submit(self, node_id: str, number: int, step: Any, kwargs: dict) -> None:
        if not self._unsent:
            self._unsent_since = time.monotonic()
        self._unsent.append(_Attempt(node_id, number, step, kwargs))

    def _flush(self) -> None:
        """Submit the dispatched attempts, as one graph."""
        batch, self._unsent = self._unsent, []
        if self.ex.stopped.is_set():
            return
        payloads = [_Payload(run_id=self.run_id, token=a.token, node_id=a.node_id,
                             attempt=a.number, topic=self._channel.topic,
                             control=self._control.name, key=a.key, fn=a.step.fn,
                             filename=getattr(getattr(a.step.fn, "__code__", None),
                                              "co_filename", None),
                             kwargs=a.kwargs, wants_ctx=a.step.wants_ctx) for a in batch]
        try:
            futures = self.client.map(_run_attempt, payloads, key=[a.key for a in batch],
                                      pure=False)
        except Exception:  # e.g. a step's function does not pickle: find which, one by one
            futures = [self._submit_one(a, p) for a, p in zip(batch, payloads)]
        for a, future in zip(batch, futures):
            if future is not None:
                a.future = future
                self._attempts[a.token] = a

    def _submit_one(self, a: _Attempt, payload: _Payload) -> Any:
        try:
            return self.client.submit(_run_attempt, payload, key=a.key, pure=False)
        except Exception as exc:
            self._end(a, error=error_info(exc))
            return None

    def _on_msg(self, msg: list) -> None:
        token, index, kind, body = msg[1], msg[2], msg[3], msg[4]
        a = self._attempts.get(token)
        if a is None or a.ended or self.ex.stopped.is_set():
            return  # an attempt already recorded as ended: what it says now is not recorded
        if index != a.next:
            if index > a.next:
                a.early[index] = (kind, body)
            return
        if index == 0:
            start = msg[5]
            a.worker, a.pid = start["worker"], start["pid"]
            self._claims.append(start["claim"])
        self._handle(a, kind, body)
        while not a.ended and a.next in a.early:
            kind, body = a.early.pop(a.next)
            self._handle(a, kind, body)

    def _handle(self, a: _Attempt, kind: str, body: Any) -> None:
        a.next += 1
        ex = self.ex
        if kind == "event":
            ex.record(body[0], body[1])
        elif kind == "file":
            ex.record_file(a.node_id, body)
        elif kind == "end":
            self._finish(a, body)
        elif kind == "add_step":
            try:
                ex.add_step(dask_pickle.loads(body), by_node=a.node_id)
                answer = ["ok", None]
            except BaseException as exc:
                answer = ["error", _dump_exception(exc)]
            self._reply(a, a.next - 1, answer)
        elif kind in ("checkpoint", "approve"):  # may wait for long: a thread of its own
            threading.Thread(target=self._answer, args=(a, a.next - 1, kind, body), daemon=True,
                             name=f"cmbagent-dask-{kind}-{a.node_id}").start()
        else:
            logger.warning("run %s: unknown message %r from step %s", self.run_id, kind, a.node_id)

    def _answer(self, a: _Attempt, index: int, kind: str, body: Any) -> None:
        try:
            if kind == "checkpoint":
                self.ex.checkpoint(a.node_id, a.number)
                answer = ["ok", None]
            else:
                answer = ["ok", bool(self.ex.request_approval(a.node_id, str(body), a.number))]
        except Cancelled:
            answer = ["cancelled"]
        except BaseException as exc:
            answer = ["error", _dump_exception(exc)]
        self._reply(a, index, answer)

    def _reply(self, a: _Attempt, index: int, answer: list) -> None:
        if a.ended:
            return
        name = _answer_name(a.token, index)
        a.answers.append(name)
        try:
            Variable(name, self.client).set(answer)
            Event(name, self.client).set()  # the doorbell: the task waits on it
        except Exception:
            logger.exception("run %s: could not answer step %s", self.run_id, a.node_id)

    def _finish(self, a: _Attempt, body: dict) -> None:
        """The attempt's last message: how the step ended."""
        outcome = body["outcome"]
        if outcome == "cancelled":
            self._end(a, cancelled=True)
        elif outcome == "error":
            self._end(a, error=body["error"])
        elif "result" in body:
            try:
                value = dask_pickle.loads(body["result"])
            except Exception as exc:
                self._end(a, error=error_info(exc))
            else:
                self._end(a, result=value)
        else:  # a big result: fetch it from the task, off the pump
            a.finishing = True
            self._deadlines.pop(a.token, None)
            threading.Thread(target=self._fetch, args=(a,), daemon=True,
                             name=f"cmbagent-dask-fetch-{a.node_id}").start()

    def _fetch(self, a: _Attempt) -> None:
        try:
            value = a.future.result()
        except BaseException as exc:
            self._q.put(("fetched", a.token, False, exc))
        else:
            self._q.put(("fetched", a.token, True, value))

    def _on_fetched(self, token: str, ok: bool, value: Any) -> None:
        a = self._attempts.get(token)
        if a is None or a.ended:
            return
        if ok:
            self._end(a, result=value)
        else:
            self._end(a, error=self._lost(a, "error", value, "its result was lost before the "
                                                             "executor could fetch it"))

    # -- tasks that end without saying so -------------------------------------------------------

    def _on_timers(self) -> None:
        now = time.monotonic()
        if self._spent and self._release_at <= now:
            self._spent = []  # the last references: Dask releases them (in one batch)
        if self._attempts and self._poll_at <= now:
            self._poll_at = now + POLL_S
            self._poll()
        for token, at in list(self._deadlines.items()):
            if at > now:
                continue
            a = self._attempts.get(token)
            if a is None or a.ended or a.finishing:
                self._deadlines.pop(token, None)
            elif not a.recovered:  # fetch what the stream lost from the scheduler's topic log
                a.recovered = True
                self._deadlines[token] = now + EVENTS_GRACE_S
                try:
                    logged = self.client.get_events(self._channel.topic)
                except Exception:
                    logger.exception("run %s: could not read the Dask topic log", self.run_id)
                    logged = ()
                for _ts, msg in logged:
                    if msg[1] == token and msg[2] >= a.next and not a.ended:
                        self._on_msg(msg)
            else:
                self._deadlines.pop(token, None)
                where = f"worker {a.worker}" if a.worker else "its worker"
                err = EventsLost(f"attempt {a.number} of step {a.node_id!r} finished on {where}, "
                                 f"but its messages from #{a.next} on never reached the executor "
                                 f"(Dask topic {self._channel.topic!r})")
                self._end(a, error=error_info(err))

    def _poll(self) -> None:
        """Tasks that ended without their ``end`` recorded: lost, or their messages late."""
        for a in list(self._attempts.values()):
            if a.ended or a.finishing or a.future is None:
                continue
            status = a.future.status
            if status == "pending":
                continue
            if status == "finished":  # its "end" is not recorded yet: give it time, then refetch
                if a.token not in self._deadlines and not a.recovered:
                    self._deadlines[a.token] = time.monotonic() + RECOVER_AFTER_S
                continue
            exc = None
            if status == "error":
                try:
                    exc = a.future.exception(timeout=5)
                except BaseException as e:  # noqa: BLE001 - whatever it is, the task failed
                    exc = e
            self._end(a, error=self._lost(a, status, exc))

    def _lost(self, a: _Attempt, status: str, exc: Optional[BaseException],
              what: str = "the step did not finish") -> dict:
        """The error of an attempt whose task failed outside the step (or was dropped)."""
        if exc is not None and not isinstance(exc, (WorkerLost, KilledWorker)):
            try:  # e.g. the step's function cannot be unpickled on the worker
                tb = a.future.traceback(timeout=5) if status == "error" else None
            except BaseException:  # noqa: BLE001
                tb = None
            return error_info(exc.with_traceback(tb))
        where = (f"the Dask worker {a.worker} (pid {a.pid})" if a.worker
                 else "the Dask worker it was sent to")
        if status in ("error", "finished"):
            message = (f"attempt {a.number} of step {a.node_id!r} was lost: {where} died or was "
                       f"cut off from the scheduler, and {what}")
            if isinstance(exc, WorkerLost):
                message += f" ({exc})"
            elif isinstance(exc, KilledWorker):
                message += " (Dask gave up on the task: KilledWorker)"
        else:
            message = (f"attempt {a.number} of step {a.node_id!r} was lost: the Dask scheduler "
                       f"dropped its task ({status}) on {where}")
        return error_info(WorkerLost(message))

    # -- ending attempts ------------------------------------------------------------------------

    def _current(self, a: _Attempt) -> bool:
        """Whether ``a`` is the node's attempt in progress (call under the executor's lock)."""
        node = self.ex.view.nodes[a.node_id]
        return node["attempt"] == a.number and node["status"] in states.ACTIVE_NODE_STATES

    def _end(self, a: _Attempt, **outcome: Any) -> None:
        """Record the attempt's end (once), then let go of its task."""
        a.ended = True
        self._deadlines.pop(a.token, None)
        if "error" in outcome:  # before the run may settle below (and its client close)
            self._drop_answers(a)
        ex = self.ex
        with ex.cond:
            if self._current(a) and not ex.stopped.is_set():
                ex._end_attempt(a.node_id, **outcome)
        self._forget(a)

    def _drop_answers(self, a: _Attempt) -> None:
        """Delete the answers a lost task will never read."""
        try:
            for name in a.answers:
                Variable(name, self.client).delete()
                Event(name, self.client).clear()
        except Exception:  # the attempt's end is recorded all the same
            logger.exception("run %s: could not clean up on the Dask cluster", self.run_id)

    def _forget(self, a: _Attempt) -> None:
        self._attempts.pop(a.token, None)
        if a.future is not None:  # released soon, with others (the scheduler forgets the task)
            if not self._spent:
                self._release_at = time.monotonic() + RELEASE_EVERY_S
            self._spent.append(a.future)
            a.future = None

    # -- pause, resume, cancel ------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        if self.ex.view.run["state"] in states.SETTLED_WORKFLOW_STATES:
            return  # settled since: release_cluster let go of everything, nothing is held back
        value = (_STOP if state in states.CANCELLED_WORKFLOW_STATES
                 else _HOLD if state in states.PAUSED_WORKFLOW_STATES else _GO)
        # Tasks that have not started are dealt with before the running ones hear: a step
        # stopping at its checkpoint frees its worker thread, and a queued task would
        # otherwise start there before its claim is taken.
        if value == _HOLD:
            self._hold_back()
        elif value == _STOP:
            self._cancel_unstarted()
        if value != self._control_value:
            self._control_value = value
            self._control.set(value)
        if value == _GO and self._parked:
            self._resume_parked()

    def _unstarted(self) -> list[_Attempt]:
        """Attempts not yet sent, and sent ones whose claims the runner could take (so their
        tasks never run); their Dask tasks are cancelled."""
        held, self._unsent = self._unsent, []
        sent = [a for a in self._attempts.values()
                if not a.ended and not a.finishing and a.worker is None and a.future is not None]
        if sent:
            taken = self.client.sync(self._take_claims, [a.token for a in sent])
            won = [a for a, claim in zip(sent, taken) if claim]
            self._claims.extend(claim for claim in taken if claim)
            if won:
                self.client.cancel([a.future for a in won])
                for a in won:
                    self._attempts.pop(a.token, None)
                    a.future = None
            held += won
        return held

    async def _take_claims(self, tokens: list[str]) -> list[Optional[str]]:
        """For each token, the id under which this runner took its claim (None: taken already)."""
        import asyncio

        async def take(token: str) -> Optional[str]:
            claim = f"cmbagent-runner-{token}"
            try:  # what MultiLock.acquire(blocking=False) sends, many at once
                got = await self.client.scheduler.multi_lock_acquire(
                    locks=[_claim_name(token)], id=claim, timeout=0, num_locks=1)
            except Exception:
                return None
            return claim if got else None

        return list(await asyncio.gather(*(take(t) for t in tokens)))

    def _hold_back(self) -> None:
        """A pause: tasks not started yet pause as at a checkpoint before their first line."""
        held = self._unstarted()
        ex = self.ex
        with ex.cond:
            if ex.stopped.is_set():
                return
            pausing = ex.view.run["state"] in states.PAUSED_WORKFLOW_STATES
            for a in held:
                if not self._current(a):
                    continue
                if pausing and ex.view.nodes[a.node_id]["status"] == "running":
                    ex._set_node(a.node_id, "paused", reason="run paused")
                self._parked.append(a)
        if not pausing:  # resumed meanwhile
            self._resume_parked()

    def _resume_parked(self) -> None:
        ex = self.ex
        with ex.cond:
            if ex.stopped.is_set() or ex.view.run["state"] not in states.DISPATCHING_WORKFLOW_STATES:
                return
            parked, self._parked = self._parked, []
            for a in parked:
                if not self._current(a):
                    continue
                if ex.view.nodes[a.node_id]["status"] == "paused":
                    ex._set_node(a.node_id, "running", reason="run resumed")
                self._on_submit(a.node_id, a.number, a.step, a.kwargs)

    def _cancel_unstarted(self) -> None:
        """A cancel: tasks not started yet never start; their nodes are cancelled."""
        held = self._unstarted() + self._parked
        self._parked = []
        for a in held:
            self._end(a, cancelled=True)

    # -- the end -----------------------------------------------------------------------------------

    def release_cluster(self) -> None:
        """The run is about to settle (completed, failed or cancelled): let go of what it
        holds on the scheduler (its claims, its control Variable, the futures of its
        recorded attempts) now, while the caller's Client is surely open.

        The executor calls this under its lock, in the thread that settles the run, before
        recording it: ``run.wait()`` returns only after it. No attempt is live then (every
        node is final), so nothing can claim meanwhile; a retry sets up what it needs.
        """
        spent, self._spent = self._spent, []
        claims, self._claims = self._claims, []
        control, self._control_value = self._control_value, None
        del spent  # the last references: the scheduler forgets those tasks
        try:
            if claims:  # bounded: the executor's lock is held meanwhile
                self.client.sync(self._release_claims, claims, callback_timeout=RELEASE_TIMEOUT_S)
            if control is not None:
                self._control.delete()
        except Exception:
            logger.exception("run %s: could not clean up on the Dask cluster", self.run_id)

    def _stop(self) -> None:
        """The executor stopped: drop what is left on the cluster, release the claims."""
        try:
            self._parked = []
            self._unstarted()  # never to start
            live = [a for a in self._attempts.values() if not a.ended]
            if live:  # started steps of an executor that stopped without finishing (lost, closed)
                self._control.set(_STOP)  # they get Cancelled at their next checkpoint
                self.client.cancel([a.future for a in live if a.future is not None])
            elif self._control_value is not None:  # else released when the run settled
                self._control.delete()
            self._attempts.clear()
            self._spent = []
            claims, self._claims = self._claims, []
            if claims:
                self.client.sync(self._release_claims, claims)
        except Exception:
            logger.exception("run %s: could not clean up on the Dask cluster", self.run_id)
        finally:
            try:
                self.close()
            except Exception:
                logger.exception("run %s: could not close the Dask client", self.run_id)

    async def _release_claims(self, claims: list[str]) -> None:
        import asyncio

        for i in range(0, len(claims), 256):
            await asyncio.gather(*(self.client.scheduler.multi_lock_release(id=c)
                                   for c in claims[i:i + 256]), return_exceptions=True)
