"""``DaskRunner``: the executor's runner of step bodies on a Dask cluster, in the
executor's process (engine.dask's notes)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any, Optional

from distributed import Client, Event, Variable
from distributed.protocol import pickle as dask_pickle
from distributed.scheduler import KilledWorker

from .. import states
from ..errors import Cancelled, EngineError, WorkerLost, error_info
from .channel import GO, HOLD, STOP, Attempt, Channel, Payload, claim_name, answer_name, dump_exception
from .worker import run_attempt

logger = logging.getLogger(__name__)

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
#: How long a settling run waits for the scheduler to release its claims (an unreachable
#: scheduler must not hold the run's executor for long).
RELEASE_TIMEOUT_S = 10.0


class EventsLost(EngineError):
    """A step's attempt finished on a worker but some of its messages never arrived."""

    code = "events_lost"


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


def _send_now(client: Client) -> None:
    """On the Client's event loop, after the messages queued before this call: send what
    the Client holds for the scheduler now. A Client batches its messages to the scheduler
    (``BatchedSend``, one write per 10 ms at most): in a chain every step's graph arrives
    after the previous one's has just been sent, so each step would wait out the rest of
    that window; the runner batches its submissions itself (SUBMIT_WAIT_S)."""
    comm = getattr(client, "scheduler_comm", None)
    if comm is not None and getattr(comm, "buffer", None):
        comm.next_deadline = None
        comm.waker.set()


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
        self._attempts: dict[str, Attempt] = {}  # submitted to Dask, not yet let go
        self._unsent: list[Attempt] = []  # dispatched, to be submitted in one graph
        self._unsent_since = 0.0
        self._parked: list[Attempt] = []  # held back by a pause (their nodes are paused)
        self._deadlines: dict[str, float] = {}
        self._claims: list[str] = []  # ids of the claims taken (by tasks or by this runner)
        self._spent: list[Any] = []  # futures of recorded attempts, to release (RELEASE_EVERY_S)
        self._release_at = 0.0
        self._poll_at = 0.0
        self._control_value = GO
        self._channel: Optional[Channel] = None
        try:
            self._channel = Channel.of(self.client)
            self._channel.routes[run_id] = self._q
            self._control = Variable(f"cmbagent-control-{run_id}", self.client)
            self._control.set(GO)
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
            Channel.forget(self.client)
            self.client.close()

    # -- the runner interface (under the executor's lock: queue, never block) ----------------

    def submit(self, node_id: str) -> None:
        ex = self.ex
        step = ex.steps[node_id]
        kwargs = {d: ex.result_of(d) for d in step.inputs}
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
        self._unsent.append(Attempt(node_id, number, step, kwargs))

    def _flush(self) -> None:
        """Submit the dispatched attempts, as one graph."""
        batch, self._unsent = self._unsent, []
        if self.ex.stopped.is_set():
            return
        # A step's code starts once its inputs are on record (Executor.inputs_durable).
        durable = []
        for a in batch:
            if self.ex.inputs_durable(a.node_id):
                durable.append(a)
            else:  # refused: the lease is gone and the run stops
                self._end(a, cancelled=True)
        batch = durable
        if not batch:
            return
        payloads = [Payload(run_id=self.run_id, token=a.token, node_id=a.node_id,
                             attempt=a.number, topic=self._channel.topic,
                             control=self._control.name, key=a.key, fn=a.step.fn,
                             filename=getattr(getattr(a.step.fn, "__code__", None),
                                              "co_filename", None),
                             kwargs=a.kwargs, wants_ctx=a.step.wants_ctx,
                             capture_output=a.step.capture_output or "tee") for a in batch]
        try:
            futures = self.client.map(run_attempt, payloads, key=[a.key for a in batch],
                                      pure=False)
        except Exception:  # e.g. a step's function does not pickle: find which, one by one
            futures = [self._submit_one(a, p) for a, p in zip(batch, payloads)]
        self.client.loop.add_callback(_send_now, self.client)
        for a, future in zip(batch, futures):
            if future is not None:
                a.future = future
                self._attempts[a.token] = a

    def _submit_one(self, a: Attempt, payload: Payload) -> Any:
        try:
            return self.client.submit(run_attempt, payload, key=a.key, pure=False)
        except Exception as exc:
            self._end(a, error=error_info(exc))
            return None

    def _on_msg(self, msg: list) -> None:
        a = self._attempts.get(msg[1])
        if a is None or a.ended or self.ex.stopped.is_set():
            return  # an attempt already recorded as ended: what it says now is not recorded
        if msg[2] == a.next == 0:  # its first message says where it runs, and its claim
            start = msg[5]
            a.worker, a.pid = start["worker"], start["pid"]
            self._claims.append(start["claim"])
        for index, kind, body in a.in_order(msg[2], msg[3], msg[4]):
            self._handle(a, index, kind, body)

    def _handle(self, a: Attempt, index: int, kind: str, body: Any) -> None:
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
                answer = ["error", dump_exception(exc)]
            self._reply(a, index, answer)
        elif kind in ("checkpoint", "approve", "ask"):  # may wait for long: a thread of its own
            threading.Thread(target=self._answer, args=(a, index, kind, body), daemon=True,
                             name=f"cmbagent-dask-{kind}-{a.node_id}").start()
        else:
            logger.warning("run %s: unknown message %r from step %s", self.run_id, kind, a.node_id)

    def _answer(self, a: Attempt, index: int, kind: str, body: Any) -> None:
        try:
            if kind == "checkpoint":
                self.ex.checkpoint(a.node_id, a.number)
                answer = ["ok", None]
            elif kind == "approve":
                approved, comment = self.ex.request_approval(a.node_id, str(body), a.number)
                answer = ["ok", [bool(approved), comment]]
            else:
                answer = ["ok", self.ex.request_input(a.node_id, body["question"], body["choices"], a.number)]
        except Cancelled:
            answer = ["cancelled"]
        except BaseException as exc:
            answer = ["error", dump_exception(exc)]
        self._reply(a, index, answer)

    def _reply(self, a: Attempt, index: int, answer: list) -> None:
        if a.ended:
            return
        name = answer_name(a.token, index)
        a.answers.append(name)
        try:
            Variable(name, self.client).set(answer)
            Event(name, self.client).set()  # the doorbell: the task waits on it
        except Exception:
            logger.exception("run %s: could not answer step %s", self.run_id, a.node_id)

    def _finish(self, a: Attempt, body: dict) -> None:
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

    def _fetch(self, a: Attempt) -> None:
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

    def _lost(self, a: Attempt, status: str, exc: Optional[BaseException],
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

    def _current(self, a: Attempt) -> bool:
        """Whether ``a`` is the node's attempt in progress (call under the executor's lock)."""
        node = self.ex.view.nodes[a.node_id]
        return node["attempt"] == a.number and node["status"] in states.ACTIVE_NODE_STATES

    def _end(self, a: Attempt, **outcome: Any) -> None:
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

    def _drop_answers(self, a: Attempt) -> None:
        """Delete the answers a lost task will never read."""
        try:
            for name in a.answers:
                Variable(name, self.client).delete()
                Event(name, self.client).clear()
        except Exception:  # the attempt's end is recorded all the same
            logger.exception("run %s: could not clean up on the Dask cluster", self.run_id)

    def _forget(self, a: Attempt) -> None:
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
        value = (STOP if state in states.CANCELLED_WORKFLOW_STATES
                 else HOLD if state in states.PAUSED_WORKFLOW_STATES else GO)
        # Tasks that have not started are dealt with before the running ones hear: a step
        # stopping at its checkpoint frees its worker thread, and a queued task would
        # otherwise start there before its claim is taken.
        if value == HOLD:
            self._hold_back()
        elif value == STOP:
            self._cancel_unstarted()
        if value != self._control_value:
            self._control_value = value
            self._control.set(value)
        if value == GO and self._parked:
            self._resume_parked()

    def _unstarted(self) -> list[Attempt]:
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
        async def take(token: str) -> Optional[str]:
            claim = f"cmbagent-runner-{token}"
            try:  # what MultiLock.acquire(blocking=False) sends, many at once
                got = await self.client.scheduler.multi_lock_acquire(
                    locks=[claim_name(token)], id=claim, timeout=0, num_locks=1)
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
                self._control.set(STOP)  # they get Cancelled at their next checkpoint
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
        for i in range(0, len(claims), 256):
            await asyncio.gather(*(self.client.scheduler.multi_lock_release(id=c)
                                   for c in claims[i:i + 256]), return_exceptions=True)
