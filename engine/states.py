"""Workflow and node states, their transition tables, and which commands are legal when.

This module is the single source of truth for the state machine: the executor, the
store, the replay reducer and the server all ask it. What a state *means* to them is
named here too (the sets below), never spelled out where it is used.
"""

from __future__ import annotations

from enum import Enum

from .errors import CommandRejected, IllegalTransition, UnknownNode


class WorkflowState(str, Enum):
    draft = "draft"
    planning = "planning"
    executing = "executing"
    pausing = "pausing"
    paused = "paused"
    waiting_approval = "waiting_approval"
    cancelling = "cancelling"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    def __str__(self) -> str:
        return self.value


class NodeState(str, Enum):
    pending = "pending"
    running = "running"
    paused = "paused"
    waiting_approval = "waiting_approval"
    retrying = "retrying"
    completed = "completed"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"

    def __str__(self) -> str:
        return self.value


W, N = WorkflowState, NodeState

WORKFLOW_TRANSITIONS: dict[WorkflowState, frozenset[WorkflowState]] = {
    W.draft: frozenset({W.planning, W.cancelling, W.failed}),
    W.planning: frozenset({W.executing, W.cancelling, W.failed}),
    W.executing: frozenset({W.pausing, W.waiting_approval, W.cancelling, W.completed, W.failed}),
    W.pausing: frozenset({W.paused, W.executing, W.cancelling, W.completed, W.failed}),
    W.paused: frozenset({W.executing, W.cancelling, W.failed}),
    W.waiting_approval: frozenset({W.executing, W.pausing, W.cancelling, W.failed}),
    W.cancelling: frozenset({W.cancelled, W.failed}),
    # Reopened: a failed run by run.retry(node); a completed one by run.rerun(node); a
    # failed or cancelled one by wf.resume(run_id) in another process.
    W.completed: frozenset({W.executing}),
    W.failed: frozenset({W.executing}),
    W.cancelled: frozenset({W.executing}),
}

NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    N.pending: frozenset({N.running, N.skipped, N.cancelled}),
    N.running: frozenset(
        {N.completed, N.failed, N.retrying, N.paused, N.waiting_approval, N.cancelled}
    ),
    N.paused: frozenset({N.running, N.cancelled, N.failed}),
    N.waiting_approval: frozenset({N.running, N.paused, N.cancelled, N.failed}),
    N.retrying: frozenset({N.running, N.cancelled, N.failed}),
    # -> pending: to run again (run.rerun, wf.resume).
    N.completed: frozenset({N.pending}),
    N.failed: frozenset({N.retrying, N.pending}),
    N.skipped: frozenset({N.pending, N.cancelled}),
    N.cancelled: frozenset({N.pending}),
}

#: States a run does not leave by itself, nor by a retry (which reopens `failed`): only
#: a re-run (completed) or a resume in another process (cancelled) reopens them.
FINAL_WORKFLOW_STATES = frozenset({W.completed, W.cancelled})
#: States in which a run has stopped making progress on its own.
SETTLED_WORKFLOW_STATES = frozenset({W.completed, W.cancelled, W.failed})
FINAL_NODE_STATES = frozenset({N.completed, N.skipped, N.cancelled, N.failed})
#: Node states that hold a worker thread (the node's code is on the stack).
ACTIVE_NODE_STATES = frozenset({N.running, N.paused, N.waiting_approval})

#: Run states in which the executor starts steps.
DISPATCHING_WORKFLOW_STATES = frozenset({W.executing, W.waiting_approval})
#: Run states of a pause: running steps wait at their next checkpoint.
PAUSED_WORKFLOW_STATES = frozenset({W.pausing, W.paused})
#: Run states of a cancel: running steps stop at their next checkpoint.
CANCELLED_WORKFLOW_STATES = frozenset({W.cancelling, W.cancelled})
#: Node states from which ``running`` starts a new attempt (``step_started``).
ATTEMPT_START_NODE_STATES = frozenset({N.pending, N.retrying})
#: Final node states without a result: their dependents cannot run (they are skipped).
BLOCKING_NODE_STATES = frozenset({N.failed, N.skipped, N.cancelled})
#: Node states with an attempt under way or due: they fail when the run is lost.
UNFINISHED_NODE_STATES = ACTIVE_NODE_STATES | {N.retrying}
#: Node states with no step code running that a cancel ends at once.
IDLE_NODE_STATES = frozenset({N.pending, N.retrying, N.skipped})
#: Node states a run's progress counts as done (``done`` of ``total``).
DONE_NODE_STATES = frozenset({N.completed, N.skipped, N.cancelled})


# The tables as plain string pairs: checking a transition is one set lookup.
_WORKFLOW_PAIRS = frozenset((a.value, b.value) for a, bs in WORKFLOW_TRANSITIONS.items() for b in bs)
_NODE_PAIRS = frozenset((a.value, b.value) for a, bs in NODE_TRANSITIONS.items() for b in bs)


def check_workflow(old: str, new: str, entity: str = "workflow") -> None:
    """Raise IllegalTransition unless ``old -> new`` is in the workflow table."""
    if (str(old), str(new)) not in _WORKFLOW_PAIRS:
        raise IllegalTransition(entity, old, new)


def check_node(old: str, new: str, entity: str = "node") -> None:
    """Raise IllegalTransition unless ``old -> new`` is in the node table."""
    if (str(old), str(new)) not in _NODE_PAIRS:
        raise IllegalTransition(entity, old, new)


def workflow_event_type(old: str, new: str) -> str:
    """The one event a workflow transition records: the specific type where one exists,
    else ``workflow_state_changed`` (docs/architecture.md, "Where each contract lives")."""
    new = W(new)
    if new is W.executing and W(old) in (W.draft, W.planning):
        return "workflow_started"
    if new is W.executing and W(old) is W.paused:
        return "workflow_resumed"
    return {
        W.paused: "workflow_paused",
        W.completed: "workflow_completed",
        W.failed: "workflow_failed",
        W.cancelled: "workflow_cancelled",
    }.get(new, "workflow_state_changed")


_NODE_EVENTS = {"completed": "step_completed", "failed": "step_failed",
                "retrying": "step_retry_started"}


def node_event_type(old: str, new: str) -> str:
    """The one event a node transition records.

    ``step_started`` marks the start of an attempt (from pending or retrying); a node
    going back to running after a pause or an approval is a status change.
    """
    new, old = str(new), str(old)
    if new == "running":
        return "step_started" if old in ATTEMPT_START_NODE_STATES else "dag_node_status_changed"
    return _NODE_EVENTS.get(new, "dag_node_status_changed")


# -- commands ------------------------------------------------------------------

COMMAND_ACTIONS = ("pause", "resume", "cancel", "retry", "approve", "reject", "answer", "rerun")
#: The commands that answer a pending approval (``ctx.approve``).
APPROVAL_ACTIONS = ("approve", "reject")
#: What a human is asked, by the kind of pending request (``ctx.approve`` / ``ctx.ask``),
#: and the commands that answer each kind. Both wait in ``run.pending_approvals``: a
#: question keeps its node ``waiting_approval`` and its run ``waiting_approval`` the
#: same way, so every count and notification of "waiting on a human" covers both.
REQUEST_KINDS = {"approval": APPROVAL_ACTIONS, "question": ("answer",)}

_COMMAND_RUN_STATES: dict[str, frozenset[WorkflowState]] = {
    "pause": frozenset({W.planning, W.executing, W.waiting_approval}),
    "resume": frozenset({W.pausing, W.paused}),
    "cancel": frozenset({W.draft, W.planning, W.executing, W.pausing, W.paused, W.waiting_approval}),
    "retry": frozenset({W.executing, W.pausing, W.paused, W.waiting_approval, W.failed}),
    "approve": frozenset({W.executing, W.pausing, W.paused, W.waiting_approval}),
    "reject": frozenset({W.executing, W.pausing, W.paused, W.waiting_approval}),
    "answer": frozenset({W.executing, W.pausing, W.paused, W.waiting_approval}),
    # -- durable work: run a step and everything downstream again --
    "rerun": frozenset({W.executing, W.pausing, W.paused, W.waiting_approval, W.completed, W.failed}),
}
#: Node states a re-run may start from (a step with no code running).
RERUN_NODE_STATES = frozenset({N.completed, N.failed, N.cancelled, N.skipped})


def command_error(action: str, run_state: str, node_status: str | None = None) -> str | None:
    """Why ``action`` is not legal for a run in ``run_state`` (None if it is).

    ``node_status`` is the status of the command's node for retry. Approvals are
    checked by the caller, which knows which ones are pending.
    """
    if action not in _COMMAND_RUN_STATES:
        return f"unknown action {action!r}; expected one of {', '.join(COMMAND_ACTIONS)}"
    if W(run_state) not in _COMMAND_RUN_STATES[action]:
        return f"cannot {action} a run that is {run_state}"
    if action == "retry" and node_status != N.failed:
        return f"cannot retry a node that is {node_status}; only failed nodes can be retried"
    if action == "rerun" and node_status is None:
        return "rerun needs a node_id: the step to run again, with everything downstream of it"
    if action == "rerun" and N(node_status) not in RERUN_NODE_STATES:
        return f"cannot re-run a node that is {node_status}; wait until it has finished"
    return None


def check_command(run: dict, nodes: dict, action: str, node_id: str | None,
                  payload: dict | None = None) -> str | None:
    """The node a command is about (the one with the pending request it answers, for an
    approve, reject or answer that names none); UnknownNode or CommandRejected if the
    command is not legal now.

    ``run`` and ``nodes`` are the run's documents (engine.snapshot.RunState); ``payload``
    the command's (an answer's ``text`` must be one of the question's ``choices`` when it
    has some). The store asks before it accepts a command, and the executor again when it
    applies it.
    """
    if node_id is not None and node_id not in nodes:
        raise UnknownNode(run["id"], node_id)
    kind = next((k for k, actions in REQUEST_KINDS.items() if action in actions), None)
    if kind is not None:
        what = "approval" if kind == "approval" else "question"
        pending = [a for a in run["pending_approvals"] if a.get("kind", "approval") == kind]
        if node_id is not None:
            pending = [a for a in pending if a["node_id"] == node_id]
        if not pending:
            where = f" on node {node_id!r}" if node_id else ""
            raise CommandRejected(f"no {what} is pending{where}", f"no_pending_{what}")
        if len(pending) > 1:
            raise CommandRejected(
                f"{len(pending)} {what}s are pending ({', '.join(a['node_id'] for a in pending)}); "
                "name the node", f"ambiguous_{what}")
        node_id = pending[0]["node_id"]
        if kind == "question":
            _check_answer(pending[0], (payload or {}).get("text"))
    err = command_error(action, run["state"], nodes[node_id]["status"] if node_id is not None else None)
    if err:
        raise CommandRejected(err, "illegal_command")
    return node_id


def _check_answer(question: dict, text: object) -> None:
    if not isinstance(text, str):
        raise CommandRejected("an answer needs its text (payload {\"text\": ...})", "illegal_command")
    choices = question.get("choices")
    if choices and text not in choices:
        raise CommandRejected(f"the answer must be one of {', '.join(map(repr, choices))}",
                              "illegal_command")


def contract() -> dict:
    """The state machine's public facts as plain JSON: state names, the sets clients
    reason with, and the run states each command is legal in.

    The wire schema carries it, and the front end's TypeScript constants are
    generated from it (one source: this module).
    """
    def names(states) -> list[str]:
        order = {s: i for i, s in enumerate([*WorkflowState, *NodeState])}
        return [s.value for s in sorted(states, key=order.__getitem__)]

    return {
        "workflow_states": [s.value for s in WorkflowState],
        "node_states": [s.value for s in NodeState],
        "final_workflow_states": names(FINAL_WORKFLOW_STATES),
        "settled_workflow_states": names(SETTLED_WORKFLOW_STATES),
        "final_node_states": names(FINAL_NODE_STATES),
        "active_node_states": names(ACTIVE_NODE_STATES),
        "command_actions": list(COMMAND_ACTIONS),
        "command_run_states": {a: names(s) for a, s in _COMMAND_RUN_STATES.items()},
        "command_node_states": {"retry": [N.failed.value], "rerun": names(RERUN_NODE_STATES)},
    }
