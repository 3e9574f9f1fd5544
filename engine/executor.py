"""The executor: runs a workflow's ready steps on a thread pool (or, through the same
runner seam, on a Dask cluster: engine.dask) and records every fact.

One executor per run, in the process that started it (the step code lives there).
All state changes happen under one lock, in this order: check the transition table,
apply the event to the in-memory view (the reducer), hand the event and the new state
to the journal (group commit). Control commands are read from the store, so a run
started here obeys a pause sent from a browser, and vice versa: this process's
watcher (engine.runtime) wakes the executor when one arrives, and renews its lease.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

import networkx as nx

from . import runtime, states
from .context import StepContext
from .errors import (
    Cancelled,
    CommandRejected,
    EngineError,
    LeaseLost,
    LogConflict,
    RunBusy,
    UnknownNode,
    WorkflowDefinitionError,
    error_info,
)
from .events import escape_surrogates, loggable, new_event
from .output import capture
from .results import Stored, Unstorable, code_fingerprint, unstored_info
from .snapshot import RunState
from .step import Step
from .store.base import Commit, Store
from .store.leases import LEASE_RENEW_S, Lease, lost_run_events

#: How long the executor waits before reading the store again after a transient failure.
OUTAGE_PAUSE_S = 0.1
#: Recorded events waiting for the journal before step code has to wait (bounds memory).
OUTBOX_LIMIT = 2_000
PREVIEW_CHARS = 200

log = logging.getLogger(__name__)


class Executor:
    def __init__(self, store: Store, view: RunState, steps: dict[str, Step], lease: Lease,
                 max_workers: Optional[int], runner: Any = None,
                 reopen: Optional[dict[str, str]] = None):
        self.store = store
        self.view = view
        self.run_id = view.run["id"]
        self.steps = steps
        self.lease = lease
        self.cond = threading.Condition(threading.RLock())
        self.width = max_workers or min(32, (os.cpu_count() or 1) + 4)
        #: Where step bodies run: threads of this process (ThreadRunner), or a Dask
        #: cluster (engine.dask.DaskRunner). Either ends every attempt with _end_attempt.
        self.pool = ThreadRunner(self) if runner is None else runner.attach(self)
        self.results: dict[str, Any] = {}
        self.retry_at: dict[str, float] = {}
        self.children: dict[str, list[str]] = {nid: [] for nid in steps}
        for step in steps.values():
            for dep in step.deps:
                self.children[dep].append(step.id)
        # (A reopened run's ready steps follow from putting them back: _run_again.)
        self._ready: deque[str] = deque(nid for nid, st in steps.items() if not st.deps and reopen is None)
        self._skip: deque[str] = deque()
        #: A resumed run (engine.resume): the steps to run again, with why; the first
        #: thing the main loop records. Steps added at run time whose adder runs again
        #: wait, unbound, until it adds them again (``add_step``).
        self._reopen = reopen
        self._unbound: set[str] = set()
        self._exiting = False  # the process exits: a completed run lets its lease go
        #: Completions (with a kept result) recorded but maybe not yet committed, with the
        #: journal item that commits them: a dependent's code starts once its inputs are
        #: on record (``inputs_durable``), while the commit and the dispatch overlap.
        self._committing: dict[str, _Pull] = {}
        #: Pending human requests by id: None until answered, then (approved, comment)
        #: for an approval, the text for a question.
        self.answers: dict[str, Any] = {}
        #: Commands acted on; their new status may not be on disk yet when the store is next read.
        self._handled: set[str] = set()
        self.settled = threading.Event()  # the run is completed, failed or cancelled (durably)
        self.stopped = threading.Event()  # the executor is gone for good
        self._lost = False
        #: The lease is this process's until the executor lets it go (the watcher renews it).
        self.holds_lease = True
        self._lease_gone = False  # the watcher found it taken: stop, writing nothing more
        # The main loop's thread, when it has one (see "lifecycle"); all under self.cond.
        self._thread: Optional[threading.Thread] = None
        self._looping = True  # until start(): nobody else may start the first loop
        self._woken = False  # a wake-up came after the main loop last read the commands
        self._finished = False
        # Recorded events not yet handed to the journal (see _record / drain).
        self._outbox = threading.Condition(threading.Lock())
        self._out_events: list[dict] = []
        self._out_nodes: set[str] = set()
        self._out_commands: list[tuple] = []
        self._out_results: dict[str, Stored] = {}
        #: The journal item that will carry what is recorded now (None: none queued yet).
        self._queued_pull: Optional[_Pull] = None

    # -- lifecycle ----------------------------------------------------------------------
    #
    # The main loop (a thread) reads commands and moves the run forward. When the run has
    # failed it waits for nothing but a command (a retry), so the thread ends: the
    # watcher (engine.runtime) keeps the lease and calls ``wake`` when a command comes,
    # which starts a new one. A completed or cancelled run lets its lease go and stops.

    @property
    def _journal(self):
        """This process's journal for the run's store (engine.runtime)."""
        return runtime.journal(self.store)

    def start(self) -> None:
        runtime.register(self)
        with self.cond:
            if self._reopen is not None:
                # A resumed run is executing again (durably) before wf.resume returns.
                self._record("run_reopened", {"host": self.lease.host, "pid": self.lease.pid,
                                              "rerun": self._reopen})
                self._run_again(self._reopen, reason_prefix="resumed: ")
            self._spawn(first=self._reopen is None)

    def _spawn(self, first: bool = False) -> None:
        """Start a main-loop thread (under self.cond, when none runs)."""
        self._looping = True
        self._thread = threading.Thread(target=self._main, args=(first,), daemon=True,
                                        name=f"cmbagent-run-{self.run_id[:8]}")
        try:
            self._thread.start()
        except RuntimeError:  # the interpreter is shutting down: no new threads
            self._looping = False

    def wake(self) -> None:
        """Have the executor read its commands now (starting its thread if it has none)."""
        with self.cond:
            self._woken = True
            if not self._looping and not self.stopped.is_set():
                self._spawn()
            self.cond.notify_all()

    @property
    def idle(self) -> bool:
        """True while the run waits for nothing but a command (its executor has no thread)."""
        return not self._looping

    def lease_lost(self) -> None:
        """Another process took the run's lease (the watcher could not renew it)."""
        self._lease_gone = True
        self.wake()

    def _outage_safe(self, read, *args):
        """``read(*args)``, or None while the store is briefly unreachable (a transient
        error: a dropped connection, a restarting server). Other errors propagate. A
        lease that lapses meanwhile is noticed at the next commit (refused: LeaseLost)."""
        try:
            return read(*args)
        except Exception as exc:
            if not self.store.transient(exc):
                raise
            log.warning("cmbagent executor %s: the store failed (%s); retrying", self.run_id[:8],
                        self.store.redact(exc))
            return None

    def _idle_wait(self) -> float:
        """How long the main loop may sleep when nothing wakes it: commands and step
        transitions do; the timeout only bounds how late a refused commit is noticed."""
        wait = LEASE_RENEW_S
        if self.retry_at:
            wait = min(wait, max(0.0, min(self.retry_at.values()) - time.monotonic()))
        return wait

    def _main(self, first: bool) -> None:
        idle = False
        try:
            if first:
                with self.cond:
                    self._set_run("planning", reason="preparing the DAG")
                    self._set_run("executing")
            idle = self._loop()
        except (LeaseLost, LogConflict):
            self._lost = True  # another process recorded that this run was lost: write nothing more
        except BaseException:
            with self.cond:
                self._abandon("executor_error", "the executor failed:\n" + traceback.format_exc())
        finally:
            if not idle:
                self._finish()

    def _loop(self) -> bool:
        """Apply commands and move the run on until the executor stops (False) or the
        run waits for nothing but a command (True: the thread may end).

        Commands are read from the store when a wake-up says some came (``wake``), when
        the wait timed out (a safety net) and before the lease goes; step transitions
        also wake the loop, but only to move the run on."""
        read = True
        while not self.stopped.is_set():
            if self._lease_gone:
                raise LeaseLost(f"run {self.run_id} is no longer held by this process")
            if self.run_id in self._journal.refused:
                raise self._journal.refused[self.run_id]
            with self.cond:  # read under the lock: a final state here is already durable
                # A completed run stays held (idle) while this process lives: a re-run may
                # come. A cancelled one, or any at exit, lets go.
                finished = (self.view.run["state"] == "cancelled"
                            or (self._exiting and self.view.run["state"] in states.FINAL_WORKFLOW_STATES))
                read = read or self._woken or finished
                self._woken = False
            if read:
                commands = self._outage_safe(self.store.pending_commands, self.run_id)
                if commands is None:  # the store is briefly unreachable: try again soon
                    self.stopped.wait(OUTAGE_PAUSE_S)
                    continue
                read = False
                for cmd in commands:
                    with self.cond:
                        self._apply_command(cmd)
            if finished:
                # Every command the store accepted came before the final state, so the
                # read above saw it (and refused it): none is left waiting. Only now
                # may the lease go, or those refusals would not be written.
                self._journal.submit(self._release(), wait=True)
                break
            with self.cond:
                self._settle()
                # A step's thread may have finished the run since the read above (its
                # notify came while this loop was reading commands): go round at once.
                if not self._woken and self.view.run["state"] != "cancelled" and not self._exiting:
                    if (self.view.run["state"] in states.SETTLED_WORKFLOW_STATES
                            and self.run_id not in self._journal.refused):
                        # A wake() from now on starts a new thread: no command is missed.
                        self._looping = False
                        return True
                    read = not self.cond.wait(self._idle_wait())
        self._journal.flush()
        return False

    def _finish(self) -> None:
        """The executor is gone for good: release whoever waits, the runner and the lease's watcher."""
        with self.cond:
            if self._finished:
                return
            self._finished = True
            self._looping = False
            self.stopped.set()
            self.settled.set()
            self.cond.notify_all()
        self.pool.shutdown(wait=False, cancel_futures=True)
        runtime.forget(self)
        # The executor stays registered: its results stay readable in this process.

    def abandon(self, message: str) -> None:
        """Stop for good (the store closes); a run not finished is recorded as lost."""
        with self.cond:
            if not self.stopped.is_set():
                try:
                    self._abandon("executor_lost", message)
                except EngineError:
                    pass
                self.stopped.set()
            self.cond.notify_all()
            thread = self._thread if self._looping else None
        if thread is not None:
            thread.join(10)
        else:
            self._finish()

    def hand_over(self) -> None:
        """Stop for good, recording nothing, so that a resume in this same process takes
        the run over (engine.resume); RunBusy unless the run is settled (its steps idle)."""
        with self.cond:
            deadline = time.monotonic() + 5.0  # a settled run's loop is about to go idle
            while (self._looping and self.view.run["state"] in states.SETTLED_WORKFLOW_STATES
                   and time.monotonic() < deadline):
                self.cond.wait(0.01)
            if self.view.run["state"] not in states.SETTLED_WORKFLOW_STATES or self._looping:
                raise RunBusy(f"run {self.run_id} is {self.view.run['state']} in this process "
                              f"(pid {self.lease.pid} on {self.lease.host}); wait for it or cancel it")
            self._lost = True  # nothing more is recorded by this executor
            self.stopped.set()
        self._journal.flush()
        self._finish()

    def at_exit(self) -> bool:
        """At interpreter exit: record at once that an unfinished run is lost, and record
        nothing more. True when the run has finished but its executor has a last step to
        take (refusing late commands, letting the lease go): see ``end_at_exit``."""
        with self.cond:
            if not self.stopped.is_set() and self.view.run["state"] in states.FINAL_WORKFLOW_STATES:
                return True
            if not self.stopped.is_set():
                try:
                    self._abandon("executor_lost", "the process that ran this workflow exited")
                except EngineError:
                    pass
            self._lost = True  # whatever the workers do from now on is not recorded
            return False

    def end_at_exit(self, timeout: float) -> None:
        """Give a finished run's executor ``timeout`` seconds for its last step."""
        self._exiting = True
        self.wake()
        thread = self._thread
        if thread is not None and thread.ident is not None:
            thread.join(timeout)
        self._lost = True

    def _abandon(self, reason: str, message: str) -> None:
        """Record that this executor stops without finishing (process exit, internal error)."""
        if self.view.run["state"] in states.FINAL_WORKFLOW_STATES:
            if self.holds_lease:  # a completed run held for re-runs: nothing to record
                try:
                    self._journal.submit(self._release(), wait=True)
                except EngineError:
                    pass
            return
        for etype, data in lost_run_events(self.view, reason, message):
            self._record(etype, data)
        self.stopped.set()
        try:
            self._journal.submit(self._release(), wait=True)
        except EngineError:
            pass
        self.cond.notify_all()

    def _release(self) -> Commit:
        """The commit that lets the lease go (from now on the watcher no longer renews it)."""
        self.holds_lease = False
        return Commit(self.run_id, lease_owner=self.lease.owner, release_lease=True)

    # -- recording ------------------------------------------------------------------------

    def _record(self, etype: str, data: dict, command: Optional[tuple] = None,
                durable: bool = False, result: Optional[Stored] = None) -> Optional["_Pull"]:
        """Apply an event to the view and put it in the outbox (``durable``: wait for commit);
        return the journal item whose commit makes it durable (None once the run is lost).

        Under the executor's lock (``cond``, reentrant: the executor's own callers hold it
        already, step code's ``record`` does not). The outbox is drained by the journal's
        writer thread, which copies the run's and the touched nodes' documents once per
        batch, not once per event.
        """
        # (acquire/release: the locks' own C methods; ``with`` on a Condition adds a
        # Python call per event on the step's hot path.)
        cond, outbox = self.cond, self._outbox
        cond.acquire()
        try:
            if self._lost:
                return None
            if durable and data.get("new_state") in states.SETTLED_WORKFLOW_STATES:
                # Before anyone can see the run settled (run.wait() returns, and the caller's
                # `with Client(...)` block closes it), the runner lets go of the cluster.
                release = getattr(self.pool, "release_cluster", None)
                if release is not None:
                    release()
            outbox.acquire()
            try:
                while len(self._out_events) >= OUTBOX_LIMIT:  # steps outpace the disk: wait
                    outbox.wait()
                view = self.view
                ev = new_event(self.run_id, view.seq + 1, etype, data)
                node = view.apply(ev)
                self._out_events.append(ev)
                if node:
                    self._out_nodes.add(node)
                if command:
                    self._out_commands.append(command)
                if result is not None:  # committed with the completion, in the same transaction
                    self._out_results[data["node_id"]] = result
                pull = self._queued_pull
                if pull is None:
                    pull = self._queued_pull = _Pull(self)
                    wake = True
                else:
                    wake = False
            finally:
                outbox.release()
        finally:
            cond.release()
        if wake:
            self._journal.submit(pull)
        if durable:
            pull.future.result()
        return pull

    #: Record a fact from step code (progress, messages, costs, files, ...), as the step's
    #: context checked it (in the step's thread: engine.context): ``record(etype, data)``.
    record = _record

    def drain(self) -> Commit:
        """Everything recorded so far, as one commit (called by the journal's writer)."""
        with self._outbox:
            view = self.view
            commit = Commit(self.run_id, self._out_events, dict(view.run),
                            {n: dict(view.nodes[n]) for n in self._out_nodes},
                            self._out_commands, self.lease.owner, results=self._out_results)
            self._out_events, self._out_nodes, self._out_commands = [], set(), []
            self._out_results = {}
            self._queued_pull = None
            self._outbox.notify_all()
            return commit

    def _set_run(self, new: str, command: Optional[tuple] = None, **extra) -> None:
        old = self.view.run["state"]
        states.check_workflow(old, new, f"workflow {self.run_id}")
        data = {"old_state": old, "new_state": new, **{k: v for k, v in extra.items() if v is not None}}
        # Durable before anything else happens: whoever reads the store (a command's
        # legality check, run.state) must never see the run behind its own steps.
        self._record(states.workflow_event_type(old, new), data, command, durable=True)
        self.pool.state_changed(new)
        if new in states.SETTLED_WORKFLOW_STATES:
            self.settled.set()
        else:
            self.settled.clear()
        self.cond.notify_all()

    def _set_node(self, node_id: str, new: str, command: Optional[tuple] = None,
                  stored: Optional[Stored] = None, **extra) -> Optional["_Pull"]:
        node = self.view.nodes[node_id]
        old = node["status"]
        states.check_node(old, new, f"node {node_id}")
        attempt = node["attempt"] + (1 if new == "running" and old in states.ATTEMPT_START_NODE_STATES else 0)
        data = {"node_id": node_id, "old_status": old, "new_status": new, "attempt": attempt,
                **{k: v for k, v in extra.items() if v is not None}}
        pull = self._record(states.node_event_type(old, new), data, command, result=stored)
        self._after_node(node_id, new)
        self.cond.notify_all()
        return pull

    # -- scheduling --------------------------------------------------------------------------

    def _status(self, node_id: str) -> str:
        return self.view.nodes[node_id]["status"]

    def _settle(self) -> None:
        """Move the run forward: skip, dispatch, and derive the run's state from its nodes.

        Cost is proportional to what changed, not to the size of the DAG: readiness and
        skipping are pushed from each node transition (``_after_node``), and the run's
        state is read off the per-status counts.
        """
        while self._skip:
            nid = self._skip.popleft()
            if self._status(nid) == "pending":
                self._unbound.discard(nid)
                self._set_node(nid, "skipped", reason="an upstream step did not complete")
        counts = self.view.run["counts"]
        run_state = self.view.run["state"]
        if run_state == "cancelling":
            if counts["pending"] or counts["retrying"] or counts["skipped"]:
                for nid, node in list(self.view.nodes.items()):
                    if node["status"] in states.IDLE_NODE_STATES:
                        self.retry_at.pop(nid, None)
                        self._set_node(nid, "cancelled", reason="run cancelled")
            if not (counts["running"] or counts["paused"] or counts["waiting_approval"]):
                self._set_run("cancelled")
            return
        if run_state == "pausing":
            if counts["running"]:
                return
            if counts["pending"] or counts["retrying"] or counts["paused"] or counts["waiting_approval"]:
                self._set_run("paused")
                return
            # Nothing is left to pause: the run ends as it would have (below).
        elif run_state not in states.DISPATCHING_WORKFLOW_STATES:
            return
        # A node is marked running only when a worker thread is free to run it: "running"
        # then means running, and a pause or cancel stops every node not yet started.
        free = self.width - sum(counts[s] for s in states.ACTIVE_NODE_STATES)
        if self.retry_at:
            now = time.monotonic()
            for nid, at in list(self.retry_at.items()):
                if free > 0 and at <= now and self._status(nid) == "retrying":
                    del self.retry_at[nid]
                    self._dispatch(nid)
                    free -= 1
        while self._ready and free > 0:
            nid = self._ready.popleft()
            if self._status(nid) == "pending" and nid not in self._unbound:
                self._dispatch(nid)
                free -= 1
        if counts["running"] or counts["retrying"] or counts["paused"]:
            if self.view.run["state"] == "waiting_approval":
                self._set_run("executing")
            return
        if counts["waiting_approval"]:  # nothing else can progress until a human answers
            if self.view.run["state"] == "executing":
                self._set_run("waiting_approval", reason="a step is waiting for a human")
            return
        if counts["pending"]:
            return
        failed = [nid for nid, n in self.view.nodes.items() if n["status"] == "failed"]
        if failed:
            self._set_run("failed", reason="step_failed", failed_nodes=failed)
        else:
            self._set_run("completed")

    def _after_node(self, node_id: str, new: str) -> None:
        """Push the consequences of a node transition to its dependents."""
        if new == "completed" or new == "pending":
            for child in ([node_id] if new == "pending" else self.children[node_id]):
                if self._status(child) == "pending" and self._deps_done(child):
                    self._ready.append(child)
        elif new in states.BLOCKING_NODE_STATES:
            self._skip.extend(self.children[node_id])
        if self._unbound and new in states.FINAL_NODE_STATES:
            # Steps it added before and has not added again this time: no code to run.
            self._skip.extend(n for n in self._unbound if self.view.nodes[n]["added_by"] == node_id)

    def _deps_done(self, node_id: str) -> bool:
        return all(self._status(d) == "completed" for d in self.steps[node_id].deps)

    def _dispatch(self, node_id: str) -> None:
        self._set_node(node_id, "running")
        self.pool.submit(node_id)

    def _execute(self, node_id: str) -> None:
        """Run one attempt of a step on this thread (ThreadRunner's worker threads)."""
        step = self.steps[node_id]
        if not self.inputs_durable(node_id):
            self._end_attempt(node_id, cancelled=True)
            return
        try:
            kwargs = {d: self.result_of(d) for d in step.inputs}
            if step.wants_ctx:
                kwargs["ctx"] = StepContext(self, node_id)
            with capture(step.capture_output or "tee", node_id, self.attempt_of(node_id),
                         self._record_output):
                result = step.fn(**kwargs)
        except Cancelled:
            self._end_attempt(node_id, cancelled=True)
        except BaseException as exc:  # the step's own failure
            self._end_attempt(node_id, error=error_info(exc))
        else:
            self._end_attempt(node_id, result=result)

    def _end_attempt(self, node_id: str, result: Any = None, error: Optional[dict] = None,
                     cancelled: bool = False) -> None:
        """Record how a running attempt ended: its result, its ``error`` (see error_info)
        or ``cancelled`` (it stopped at a checkpoint of a cancelled run).

        An error's text (the step's exception) is recorded with lone surrogates escaped.
        """
        if error is not None:
            error = loggable(error, f"the error of step {node_id!r}")
        stored, kept = None, None
        keep = error is None and not cancelled and self.store.results.keep
        if keep:
            stored, kept = self._persist(node_id, result)
        with self.cond:
            try:
                if cancelled:
                    if self._status(node_id) in states.ACTIVE_NODE_STATES:
                        self._set_node(node_id, "cancelled", reason="run cancelled")
                elif error is not None:
                    self._attempt_failed(node_id, self.steps[node_id], error)
                else:
                    self.results[node_id] = result
                    if self._status(node_id) != "running":  # answered into another state:
                        self._set_node(node_id, "running")  # resume first
                    pull = self._set_node(node_id, "completed", stored=stored,
                                          result_preview=_preview(result), result=kept)
                    if keep and pull is not None and self.children[node_id]:
                        self._committing[node_id] = pull
                        pull.future.add_done_callback(lambda _, n=node_id, p=pull: self._committed(n, p))
            finally:
                if not self.stopped.is_set():
                    self._settle()
                self.cond.notify_all()

    def _committed(self, node_id: str, pull: "_Pull") -> None:
        if self._committing.get(node_id) is pull:
            del self._committing[node_id]

    def inputs_durable(self, node_id: str) -> bool:
        """Wait until the completions (and kept results) of ``node_id``'s dependencies are
        committed; False if one was refused (the lease is gone: the main loop stops the
        run). Runners call it before a step's code starts (not under the lock): a process
        killed at any moment then never has run a step on inputs it must compute again,
        yet the commit overlaps the step's dispatch instead of delaying it."""
        for dep in self.steps[node_id].deps:
            pull = self._committing.get(dep)
            if pull is not None:
                try:
                    pull.future.result()
                except Exception:
                    return False
        return True

    def _persist(self, node_id: str, result: Any) -> tuple[Optional[Stored], dict]:
        """Encode the result (and write its file, if large) before its completion is
        recorded; ``(what to commit with it, what the event says)``. A result that cannot
        be stored is kept in memory only, and the event says why."""
        fingerprint = code_fingerprint(self.steps[node_id].fn)
        try:
            stored = self.store.results.persist(self.run_id, node_id, result, fingerprint)
        except Unstorable as exc:
            return None, unstored_info(fingerprint, escape_surrogates(str(exc)))
        return stored, stored.info()

    def result_of(self, node_id: str) -> Any:
        """A completed step's result: in memory, or loaded from the store (a resumed run)."""
        try:
            return self.results[node_id]
        except KeyError:
            value = self.results[node_id] = self.store.load_result(self.run_id, node_id)
            return value

    def _attempt_failed(self, node_id: str, step: Step, error: dict) -> None:
        if self._status(node_id) != "running":
            self._set_node(node_id, "running")
        attempt = self.view.nodes[node_id]["attempt"]
        if attempt <= step.retries and self.view.run["state"] != "cancelling":
            delay = min(30.0, step.retry_delay * (2 ** (attempt - 1)))
            self._set_node(node_id, "retrying", delay_s=delay, error=error,
                           reason=f"attempt {attempt} of {step.retries + 1} failed")
            self.retry_at[node_id] = time.monotonic() + delay
        else:
            self._set_node(node_id, "failed", error=error)

    # -- cooperation with step code ------------------------------------------------------------

    def checkpoint(self, node_id: str, attempt: Optional[int] = None) -> None:
        """Wait while the run is paused; raise Cancelled when it is cancelled.

        ``attempt``: the attempt asking, for steps answered from another process (a Dask
        worker): if that attempt has meanwhile ended (its worker was lost), it gets
        Cancelled instead of touching the node, which may be running a newer attempt.
        """
        with self.cond:
            while True:
                if (self.stopped.is_set() or self.view.run["state"] == "cancelling"
                        or self._attempt_over(node_id, attempt)):
                    raise Cancelled()
                if self.view.run["state"] in states.PAUSED_WORKFLOW_STATES:
                    if self._status(node_id) == "running":
                        self._set_node(node_id, "paused", reason="run paused")
                    self.cond.wait()
                    continue
                if self._status(node_id) == "paused":
                    self._set_node(node_id, "running", reason="run resumed")
                return

    def request_approval(self, node_id: str, prompt: str,
                         attempt: Optional[int] = None) -> tuple[bool, Optional[str]]:
        """Block until a human approves or rejects: ``(approved, comment)``."""
        return self._ask_human(node_id, attempt, "approval_requested", {"prompt": prompt})

    def request_input(self, node_id: str, question: str, choices: Optional[list[str]] = None,
                      attempt: Optional[int] = None) -> str:
        """Block until a human answers ``question`` (``answer`` command): the text."""
        data: dict[str, Any] = {"question": question}
        if choices is not None:
            data["choices"] = choices
        return self._ask_human(node_id, attempt, "question_asked", data)

    def _ask_human(self, node_id: str, attempt: Optional[int], etype: str, data: dict) -> Any:
        """Record a request for a human (``etype``), hold the node ``waiting_approval``
        until a command answers it, and return what ``_do_approve`` / ``_do_answer`` put
        in ``self.answers``."""
        with self.cond:
            self.checkpoint(node_id, attempt)
            request_id = uuid.uuid4().hex
            self.answers[request_id] = None
            key = "approval_id" if etype == "approval_requested" else "question_id"
            self._set_node(node_id, "waiting_approval",
                           reason="approval requested" if key == "approval_id" else "question asked")
            self._record(etype, {"node_id": node_id, key: request_id, **data})
            while self.answers[request_id] is None:
                if (self.stopped.is_set() or self.view.run["state"] == "cancelling"
                        or self._attempt_over(node_id, attempt)):
                    self.answers.pop(request_id, None)
                    raise Cancelled()
                self.cond.wait()
            answer = self.answers.pop(request_id)
            self.checkpoint(node_id, attempt)
            return answer

    def _attempt_over(self, node_id: str, attempt: Optional[int]) -> bool:
        if attempt is None:  # a local step: its attempt ends on the thread that asks
            return False
        node = self.view.nodes[node_id]
        return node["attempt"] != attempt or node["status"] not in states.ACTIVE_NODE_STATES

    def attempt_of(self, node_id: str) -> int:
        """The node's current attempt (1, then 2 on the first retry, ...)."""
        return self.view.nodes[node_id]["attempt"]

    def _record_output(self, data: dict) -> None:
        self.record("step_output", data)

    def record_file(self, node_id: str, data: dict) -> None:
        """``file_created`` for a path new to the node, ``file_updated`` after that."""
        with self.cond:
            known = any(f["path"] == data["path"] for f in self.view.nodes[node_id]["files"])
            self._record("file_updated" if known else "file_created", data)

    def add_step(self, step: Step, by_node: str) -> None:
        with self.cond:
            if step.id in self._unbound and self.view.nodes[step.id]["added_by"] == by_node:
                self._rebind(step)
                return
            if step.id in self.steps:
                raise WorkflowDefinitionError(f"duplicate step name {step.id!r} in run {self.run_id}")
            unknown = [d for d in step.deps if d not in self.steps]
            if unknown:
                raise WorkflowDefinitionError(f"step {step.id!r} depends on unknown step(s) {unknown}")
            self.steps[step.id] = step
            self.children[step.id] = []
            for dep in step.deps:
                self.children[dep].append(step.id)
            spec = step.spec()
            self._record("dag_updated", {
                "added_nodes": [spec], "by_node": by_node,
                "added_edges": [{"source": d, "target": step.id} for d in step.deps]})
            if any(self._status(d) in states.BLOCKING_NODE_STATES for d in step.deps):
                self._skip.append(step.id)
            elif self._deps_done(step.id):
                self._ready.append(step.id)
            self.cond.notify_all()

    def _rebind(self, step: Step) -> None:
        """A step added in an earlier life of the run, added again by its (re-run) adder."""
        if list(step.deps) != self.view.nodes[step.id]["deps"]:
            raise WorkflowDefinitionError(
                f"step {step.id!r} was added with deps {self.view.nodes[step.id]['deps']} before, "
                f"now with {list(step.deps)}; a run's steps keep their dependencies")
        self.steps[step.id] = step
        self._unbound.discard(step.id)
        if self._status(step.id) == "pending" and self._deps_done(step.id):
            self._ready.append(step.id)
        self.cond.notify_all()

    # -- running steps again: a re-run, a resume --------------------------------------------------

    def _run_again(self, rerun: dict[str, str], command_id: Optional[str] = None,
                   reason_prefix: str = "") -> None:
        """Put ``rerun``'s steps (``{node_id: why}``, in declaration order) back to pending
        and the run back to executing. Steps added at run time by a step that runs again
        wait for it to add them again."""
        if self.view.run["state"] in states.SETTLED_WORKFLOW_STATES:
            self._set_run("executing", command_id=command_id, reason=reason_prefix + "steps run again")
        for nid, why in rerun.items():
            if self.view.nodes[nid]["added_by"] in rerun:
                self._unbound.add(nid)
            self.results.pop(nid, None)
            self.retry_at.pop(nid, None)
            if self._status(nid) != "pending":
                self._set_node(nid, "pending", command_id=command_id, reason=reason_prefix + why)
            else:
                self._after_node(nid, "pending")
        self.cond.notify_all()

    def _do_rerun(self, cid: str, node_id: str, payload: dict) -> None:
        again = self.view.rerun_closure({node_id: "re-run requested"})
        busy = [n for n in again if self._status(n) in states.UNFINISHED_NODE_STATES]
        if busy:
            raise CommandRejected(f"cannot re-run {node_id!r} while {', '.join(busy)} downstream "
                                  "of it is running; wait for it, or cancel the run", "illegal_command")
        self._run_again(again, command_id=cid)

    # -- commands ---------------------------------------------------------------------------------

    def _apply_command(self, cmd: dict) -> None:
        cid, action, node_id = cmd["command_id"], cmd["action"], cmd["node_id"]
        if cid in self._handled:
            return
        self._handled.add(cid)
        try:
            node_id = states.check_command(self.view.run, self.view.nodes, action, node_id, cmd["payload"])
            getattr(self, f"_do_{action}")(cid, node_id, cmd["payload"])
        except (CommandRejected, UnknownNode) as exc:
            self._journal.submit(Commit(self.run_id, commands=[(cid, "rejected", str(exc), exc.code, self.view.run["state"])],
                                             lease_owner=self.lease.owner))
        else:
            self._journal.submit(Commit(self.run_id, commands=[(cid, "applied", None, None, self.view.run["state"])],
                                             lease_owner=self.lease.owner))
        self._settle()

    def _do_pause(self, cid: str, node_id: Optional[str], payload: dict) -> None:
        self._set_run("pausing", command_id=cid)

    def _do_resume(self, cid: str, node_id: Optional[str], payload: dict) -> None:
        self._set_run("executing", command_id=cid)

    def _do_cancel(self, cid: str, node_id: Optional[str], payload: dict) -> None:
        self._set_run("cancelling", command_id=cid)

    def _do_retry(self, cid: str, node_id: str, payload: dict) -> None:
        if self.view.run["state"] == "failed":
            self._set_run("executing", command_id=cid, reason=f"retrying {node_id}")
        self._set_node(node_id, "retrying", command_id=cid, delay_s=0.0, reason="retry requested")
        self.retry_at[node_id] = 0.0
        # Re-open what the failure skipped, upstream first, unless another failure blocks it.
        g = nx.DiGraph()
        g.add_nodes_from(self.steps)
        g.add_edges_from((d, s.id) for s in self.steps.values() for d in s.deps)
        below = g.subgraph(nx.descendants(g, node_id))
        for nid in nx.lexicographical_topological_sort(below, key=lambda n: self.view.nodes[n]["position"]):
            if self._status(nid) == "skipped" and all(
                    self._status(d) not in states.BLOCKING_NODE_STATES for d in self.steps[nid].deps):
                self._set_node(nid, "pending", command_id=cid, reason=f"{node_id} is retried")

    def _do_approve(self, cid: str, node_id: str, payload: dict, approved: bool = True) -> None:
        approval = self.view.nodes[node_id]["approval"]
        comment = payload.get("comment")
        data = {"node_id": node_id, "approval_id": approval["approval_id"], "approved": approved,
                "command_id": cid}
        if comment is not None:
            comment = escape_surrogates(str(comment))
            data["comment"] = comment
        self._record("approval_received", data)
        self._human_answered(cid, node_id, "approved" if approved else "rejected")
        self.answers[approval["approval_id"]] = (approved, comment)

    def _do_reject(self, cid: str, node_id: str, payload: dict) -> None:
        self._do_approve(cid, node_id, payload, approved=False)

    def _do_answer(self, cid: str, node_id: str, payload: dict) -> None:
        question = self.view.nodes[node_id]["approval"]
        text = escape_surrogates(payload["text"])
        self._record("question_answered", {"node_id": node_id, "question_id": question["approval_id"],
                                           "answer": text, "command_id": cid})
        self._human_answered(cid, node_id, "answered")
        self.answers[question["approval_id"]] = text

    def _human_answered(self, cid: str, node_id: str, reason: str) -> None:
        """The node waits no more: running again (paused, when the run is pausing)."""
        paused = self.view.run["state"] in states.PAUSED_WORKFLOW_STATES
        self._set_node(node_id, "paused" if paused else "running", command_id=cid, reason=reason)
        if self.view.run["state"] == "waiting_approval":
            self._set_run("executing", command_id=cid)


class ThreadRunner:
    """Runs step bodies on a thread pool in the executor's process (the default).

    The runner seam: ``_dispatch`` marks a node running and calls ``submit(node_id)``;
    the runner runs one attempt of it and reports how it ended through
    ``Executor._end_attempt``. ``state_changed(state)`` hears every run state change
    (under the executor's lock: it must not block), ``shutdown`` comes once, when the
    executor stops. engine.dask.DaskRunner is the other runner.
    """

    def __init__(self, ex: "Executor"):
        self._width = ex.width
        self._name = f"cmbagent-step-{ex.run_id[:8]}"
        self._pool: Optional[ThreadPoolExecutor] = None  # made when a step is first submitted
        self._execute = ex._execute

    def submit(self, node_id: str) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._width, thread_name_prefix=self._name)
        self._pool.submit(self._execute, node_id)

    def state_changed(self, state: str) -> None:
        # Local steps read the run's state under the executor's lock. A failed run runs
        # nothing until a retry, which may never come: its idle workers end now.
        if state == "failed" and self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def shutdown(self, wait: bool = False, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def dask_runner(dask: Any, run_id: str) -> Any:
    """A runner of ``run_id``'s step bodies on the Dask cluster ``dask`` (a
    ``distributed.Client`` or a scheduler address), connected now: an unreachable
    cluster fails here, before the run exists."""
    # The engine's one lazy import, on purpose: Dask is optional (the "dask" extra), and
    # engine.dask imports distributed at its top. Nothing imports it unless dask= is given.
    from .dask import DaskRunner

    return DaskRunner(dask, run_id)


class _Pull:
    """A journal item that drains an executor's outbox when the writer reaches it."""

    __slots__ = ("executor", "run_id", "future")

    def __init__(self, executor: "Executor"):
        self.executor = executor
        self.run_id = executor.run_id
        self.future: Future = Future()  # done when what it drained is durable

    def drain(self) -> Commit:
        return self.executor.drain()


def _preview(result: Any) -> Optional[str]:
    if result is None:
        return None
    try:
        text = repr(result)
    except Exception:  # a broken __repr__ must not fail the step
        text = f"<{type(result).__name__}>"
    text = escape_surrogates(text)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
