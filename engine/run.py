"""Runs: ``start_run`` creates one and starts its executor here; ``Run`` is a handle on
one run, wherever it executes, that reads from and commands through the store.

In a notebook a run displays as whatever a front end registered for it: an entry point
in the group ``engine.run_display`` (cmbagent_jupyter registers its live widget), a
callable that takes the ``Run`` and returns an object with ``_repr_mimebundle_``. With
none installed, a run shows as its text ``repr``. The engine imports no front end.
"""

from __future__ import annotations

import functools
import time
import uuid
from importlib.metadata import entry_points
from typing import Any, Callable, Optional

from . import states
from .errors import CommandRejected, EngineError, ExecutorLost, UnknownNode, UnknownRun
from .events import new_event, now_iso
from .executor import Executor, dask_runner
from .owners import default_owner
from .runtime import local_executor
from .snapshot import RunState, new_run_doc
from .states import WorkflowState
from .step import Step
from .store.base import EventList, Store, new_command_id
from .store.leases import Lease

#: The entry-point group through which a front end says how a ``Run`` displays.
DISPLAY_GROUP = "engine.run_display"

#: How long a command call waits for the executor to act on it.
COMMAND_TIMEOUT_S = 30.0
#: A command not acted on this soon may have no executor left: from then on, reaping
#: passes (this often) find out, and refuse it (executor_lost) if so.
REAP_AFTER_S = 0.5
REAP_EVERY_S = 1.0


def start_run(store: Store, name: str, steps: dict[str, Step], *, description: str = "",
              max_workers: Optional[int] = None, owner: Optional[str] = None,
              run_id: Optional[str] = None, dask: Any = None) -> Run:
    """Create a run of the (validated) steps in ``store`` and start its executor in this
    process; return its handle (``Workflow.start``).

    ``dask`` (a ``distributed.Client`` or a scheduler address) runs the step bodies on
    that cluster (engine.dask); the executor, its lease and the log stay here.
    """
    run_id = run_id or uuid.uuid4().hex
    owner = owner or default_owner()
    created = now_iso()
    view = RunState(new_run_doc(run_id, name, description, owner, created))
    specs = [s.spec() for s in steps.values()]
    edges = [{"source": d, "target": s["id"]} for s in specs for d in s["deps"]]
    first = new_event(run_id, 1, "dag_created", {
        "run": {"name": name, "description": description, "owner": owner},
        "nodes": specs, "edges": edges})
    first["timestamp"] = created
    view.apply(first)
    runner = None
    if dask is not None:  # connect before the run exists: an unreachable cluster creates nothing
        runner = dask_runner(dask, run_id)
        max_workers = max_workers or runner.default_width()
    lease = Lease.mine()
    try:
        store.create_run(view, first, lease)
    except BaseException:
        if runner is not None:
            runner.close()
        raise
    Executor(store, view, dict(steps), lease, max_workers, runner).start()
    return Run(store, run_id)


def _refusal(run_id: str, node_id: Optional[str], code: Optional[str], message: str) -> Exception:
    """The exception for a refused command, by the refusal's code."""
    if code == "unknown_run":
        return UnknownRun(run_id)
    if code == "unknown_node":
        return UnknownNode(run_id, node_id or "")
    if code == "executor_lost":
        return ExecutorLost(message)
    return CommandRejected(message, code or "command_rejected")


class Run:
    """A run of a workflow: its state, its events, and the controls.

    Every control call goes through the store exactly like a command from the UI, so a
    handle in one process steers a run executing in another.
    """

    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.id = run_id

    # -- reading --------------------------------------------------------------------------

    @property
    def state(self) -> WorkflowState:
        return WorkflowState(self.store.run_doc(self.id)["state"])

    @property
    def name(self) -> str:
        return self.store.run_doc(self.id)["name"]

    def info(self) -> dict:
        """The run document: state, timings, totals, counts per node status."""
        return self.store.run_doc(self.id)

    def events(self, after_seq: int = 0, limit: Optional[int] = None) -> EventList:
        """Events with seq > after_seq, in seq order (typed pydantic envelopes)."""
        return self.store.events(self.id, after_seq, limit)

    def snapshot(self) -> dict:
        """The wire ``snapshot``: run, nodes, edges and layout as of event ``seq``."""
        return self.store.snapshot(self.id)

    def result(self, node_id: str) -> Any:
        """The return value of a completed step: from memory in the process that ran it,
        else loaded from the store (results are kept with their completion)."""
        ex = local_executor(self.id)
        if ex is not None and node_id in ex.results:
            return ex.results[node_id]
        return self.store.load_result(self.id, node_id)

    def wait(self, timeout: Optional[float] = None) -> WorkflowState:
        """Block until the run is completed, failed or cancelled; return that state."""
        def settled(doc: dict) -> Optional[WorkflowState]:
            state = WorkflowState(doc["state"])
            return state if state in states.SETTLED_WORKFLOW_STATES else None
        return self._poll(settled, timeout, "settled", 0.5)

    def wait_for_approval(self, node_id: Optional[str] = None,
                          timeout: Optional[float] = None) -> dict:
        """Block until a step asks for approval (``node_id``'s, if given); return the
        pending approval (``approval_id``, ``node_id``, ``prompt``, ``requested_at``).

        A step asks only when it reaches ``ctx.approve()``, so call this before
        ``approve()`` / ``reject()`` when the run was just started. Raises EngineError
        if the run settles first, TimeoutError after ``timeout`` seconds.
        """
        def asked(doc: dict) -> Optional[dict]:
            for pending in doc["pending_approvals"]:
                if node_id is None or pending["node_id"] == node_id:
                    return pending
            if WorkflowState(doc["state"]) in states.SETTLED_WORKFLOW_STATES:
                raise EngineError(f"run {self.id} is {doc['state']}: no approval was asked"
                                  + (f" by {node_id!r}" if node_id else ""))
            return None
        return self._poll(asked, timeout, "asking for an approval", 0.02)

    def _poll(self, check: Callable[[dict], Any], timeout: Optional[float], what: str,
              local_every: float) -> Any:
        """Read the run document until ``check`` returns something other than None
        (every ``local_every`` s, or at once when it settles, while it executes here)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        doc: Optional[dict] = None
        while True:
            try:
                doc = self.store.run_doc(self.id)
            except Exception as exc:
                if not self.store.transient(exc):
                    raise
                # The store is briefly unreachable (an outage, a stalled database): the
                # run goes on meanwhile, and so does the wait, up to its timeout.
            found = None if doc is None else check(doc)
            if found is not None:
                return found
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                still = doc["state"] if doc is not None else "unknown (the store is unreachable)"
                raise TimeoutError(f"run {self.id} is still {still} after {timeout} s, "
                                   f"not {what}")
            ex = local_executor(self.id)
            if ex is not None and not ex.stopped.is_set():  # a stopped one has nothing to say
                ex.settled.wait(local_every if left is None else min(left, local_every))
            else:
                time.sleep(0.02 if left is None else max(0.0, min(left, 0.02)))

    # -- control ----------------------------------------------------------------------------

    def pause(self) -> dict:
        return self.command("pause")

    def resume(self) -> dict:
        return self.command("resume")

    def cancel(self) -> dict:
        return self.command("cancel")

    def retry(self, node_id: str) -> dict:
        return self.command("retry", node_id)

    def rerun(self, node_id: str) -> dict:
        """Run ``node_id`` and everything downstream of it again (the run's process must be
        alive; where it is gone, ``wf.resume(run_id, rerun=[node_id])``)."""
        return self.command("rerun", node_id)

    def approve(self, node_id: Optional[str] = None, comment: Optional[str] = None) -> dict:
        return self.command("approve", node_id, {"comment": comment} if comment is not None else None)

    def reject(self, node_id: Optional[str] = None, comment: Optional[str] = None) -> dict:
        return self.command("reject", node_id, {"comment": comment} if comment is not None else None)

    def answer(self, text: str, node_id: Optional[str] = None) -> dict:
        """Answer a pending ``ctx.ask`` (the only one, or ``node_id``'s) with ``text``."""
        return self.command("answer", node_id, {"text": str(text)})

    def command(self, action: str, node_id: Optional[str] = None, payload: Optional[dict] = None,
                command_id: Optional[str] = None, timeout: float = COMMAND_TIMEOUT_S) -> dict:
        """Send a command through the store and wait until the executor has applied it.

        Returns the ack with the run's state after the command. Raises CommandRejected
        (or UnknownRun, UnknownNode, ExecutorLost) when it is refused.
        """
        command_id = command_id or new_command_id()
        ack = self.store.submit_command(self.id, action, node_id, payload, command_id)
        if not ack["ok"]:
            raise _refusal(self.id, node_id, ack.get("code"), ack["error"])
        ex = local_executor(self.id)
        if ex is not None:
            ex.wake()
        start = time.monotonic()
        deadline, reap_at = start + timeout, start + REAP_AFTER_S
        while True:
            status = self.store.command_status(command_id)
            if status and status["status"] == "applied":
                return {**ack, "state": status["state"]}
            if status and status["status"] == "rejected":
                raise _refusal(self.id, node_id, status["code"], status["error"] or "rejected")
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"the executor of run {self.id} did not act on {action} "
                                   f"within {timeout} s")
            if now >= reap_at and (ex is None or ex.stopped.is_set()):
                # The store accepted the command, but the run's lease only looked expired:
                # its executor may be stalled or gone. Reaping passes tell which (a few
                # seconds for a lease that only looks expired); if gone, this command is
                # refused (executor_lost) and the loop above reports it.
                self.store.reap()
                reap_at = now + REAP_EVERY_S
            time.sleep(0.005)

    def widget(self):
        """The run's live notebook widget: what the installed front end displays it as
        (the ``engine.run_display`` entry point; cmbagent_jupyter's ``RunWidget``).
        ImportError when no front end is installed."""
        show = _display()
        if show is None:
            raise ImportError(f"no front end is installed to display runs (no {DISPLAY_GROUP!r} "
                              "entry point): pip install cmbagent-jupyter")
        return show(self)

    def _repr_mimebundle_(self, include=None, exclude=None):
        """In a notebook, a run displays as its live widget."""
        try:
            widget = self.widget()
        except (ImportError, OSError):  # no widget support (or its assets) installed here
            return {"text/plain": repr(self)}
        return widget._repr_mimebundle_(include=include, exclude=exclude)

    def __repr__(self) -> str:
        try:
            doc = self.store.run_doc(self.id)
        except UnknownRun:
            return f"<Run {self.id} (unknown)>"
        return (f"<Run {doc['name']!r} {self.id} {doc['state']}: "
                f"{doc['done']}/{doc['total']} steps done>")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.id == self.id and other.store is self.store

    def __hash__(self) -> int:
        return hash(self.id)


# What Store.run hands out (see Store.handle): the store stays below the handle.
Store.handle = Run


@functools.lru_cache(maxsize=None)
def _display() -> Optional[Callable[[Run], Any]]:
    """The display a front end registered for runs (the first by name), or None.

    Loading it imports the front end: ImportError or OSError when its own dependencies
    or assets are missing, which ``_repr_mimebundle_`` takes as no display.
    """
    found = sorted(entry_points(group=DISPLAY_GROUP), key=lambda ep: ep.name)
    return found[0].load() if found else None
