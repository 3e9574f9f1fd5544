"""The transition tables, pair by pair, and the one event each transition records."""

from __future__ import annotations

import itertools

import pytest

from engine import IllegalTransition, NodeState, WorkflowState
from engine.events import EVENT_DATA_MODELS, NodeTransition, WorkflowTransition
from engine.states import (
    NODE_TRANSITIONS,
    WORKFLOW_TRANSITIONS,
    check_node,
    check_workflow,
    node_event_type,
    workflow_event_type,
)


def _pairs(spec: str) -> set[tuple[str, str]]:
    out = set()
    for line in spec.strip().splitlines():
        old, news = line.split(":")
        out |= {(old.strip(), new) for new in news.split()}
    return out


# The state machine as specified (docs/architecture.md), written out here on purpose:
# a change to engine/states.py's tables must show up as a failing test. Reopening
# (completed/cancelled -> executing, finished nodes -> pending) is run.rerun / wf.resume.
EXPECTED_WORKFLOW = _pairs("""
    draft: planning cancelling failed
    planning: executing cancelling failed
    executing: pausing waiting_approval cancelling completed failed
    pausing: paused executing cancelling completed failed
    paused: executing cancelling failed
    waiting_approval: executing pausing cancelling failed
    cancelling: cancelled failed
    completed: executing
    failed: executing
    cancelled: executing
""")

EXPECTED_NODE = _pairs("""
    pending: running skipped cancelled
    running: completed failed retrying paused waiting_approval cancelled
    paused: running cancelled failed
    waiting_approval: running paused cancelled failed
    retrying: running cancelled failed
    completed: pending
    failed: retrying pending
    skipped: pending cancelled
    cancelled: pending
""")

WORKFLOW_PAIRS = list(itertools.product([s.value for s in WorkflowState], repeat=2))
NODE_PAIRS = list(itertools.product([s.value for s in NodeState], repeat=2))


def test_state_values_are_the_contract_names():
    assert [s.value for s in WorkflowState] == [
        "draft", "planning", "executing", "pausing", "paused", "waiting_approval",
        "cancelling", "completed", "failed", "cancelled"]
    assert [s.value for s in NodeState] == [
        "pending", "running", "paused", "waiting_approval", "retrying", "completed",
        "failed", "skipped", "cancelled"]
    assert WorkflowState.completed == "completed" and NodeState.skipped == "skipped"


def test_tables_are_the_specified_ones():
    assert {(o.value, n.value) for o, ns in WORKFLOW_TRANSITIONS.items() for n in ns} == EXPECTED_WORKFLOW
    assert {(o.value, n.value) for o, ns in NODE_TRANSITIONS.items() for n in ns} == EXPECTED_NODE


def test_design_rules_hold_in_the_tables():
    w = {o.value: {n.value for n in ns} for o, ns in WORKFLOW_TRANSITIONS.items()}
    # Settled runs are reopened only by a retry (failed), a re-run (completed) or a resume.
    assert w["completed"] == w["cancelled"] == w["failed"] == {"executing"}
    # Cancel goes through cancelling; pause goes through pausing.
    assert {o for o, ns in w.items() if "cancelled" in ns} == {"cancelling"}
    assert {o for o, ns in w.items() if "paused" in ns} == {"pausing"}
    assert "pausing" in w["executing"] and "executing" in w["paused"]
    # Every non-final state can be lost (executor gone -> failed).
    assert all("failed" in ns for o, ns in w.items() if o not in ("completed", "cancelled", "failed"))


@pytest.mark.parametrize("old,new", WORKFLOW_PAIRS, ids=[f"{o}->{n}" for o, n in WORKFLOW_PAIRS])
def test_workflow_transition(old, new):
    entity = "workflow run-42"
    if (old, new) in EXPECTED_WORKFLOW:
        check_workflow(old, new, entity)
        check_workflow(WorkflowState(old), WorkflowState(new))
    else:
        with pytest.raises(IllegalTransition) as info:
            check_workflow(old, new, entity)
        err = info.value
        assert (err.entity, err.old, err.new) == (entity, old, new)
        assert str(err) == f"{entity}: illegal transition {old} -> {new}"
        assert err.code == "illegal_transition"


@pytest.mark.parametrize("old,new", NODE_PAIRS, ids=[f"{o}->{n}" for o, n in NODE_PAIRS])
def test_node_transition(old, new):
    entity = "node fit"
    if (old, new) in EXPECTED_NODE:
        check_node(old, new, entity)
        check_node(NodeState(old), NodeState(new))
    else:
        with pytest.raises(IllegalTransition) as info:
            check_node(old, new, entity)
        assert str(info.value) == f"{entity}: illegal transition {old} -> {new}"
        assert (info.value.old, info.value.new) == (old, new)


@pytest.mark.parametrize("check", [check_workflow, check_node])
@pytest.mark.parametrize("old,new", [("nonsense", "failed"), ("failed", "nonsense"), ("", "")])
def test_unknown_state_names_are_illegal_transitions(check, old, new):
    with pytest.raises(IllegalTransition, match="illegal transition"):
        check(old, new)


def _expected_workflow_event(old: str, new: str) -> str:
    """The specific type where one exists, else workflow_state_changed (docs/architecture.md)."""
    if new == "executing" and old in ("draft", "planning"):
        return "workflow_started"
    if new == "executing" and old == "paused":
        return "workflow_resumed"
    if new in ("paused", "completed", "failed", "cancelled"):
        return f"workflow_{new}"
    return "workflow_state_changed"


def _expected_node_event(old: str, new: str) -> str:
    if new == "running":  # the start of an attempt; back from a pause it is a status change
        return "step_started" if old in ("pending", "retrying") else "dag_node_status_changed"
    return {"completed": "step_completed", "failed": "step_failed",
            "retrying": "step_retry_started"}.get(new, "dag_node_status_changed")


@pytest.mark.parametrize("old,new", sorted(EXPECTED_WORKFLOW))
def test_each_workflow_transition_has_one_event_type(old, new):
    etype = workflow_event_type(old, new)
    assert etype == _expected_workflow_event(old, new)
    # The event's data carries the old and the new state.
    assert issubclass(EVENT_DATA_MODELS[etype], WorkflowTransition)


@pytest.mark.parametrize("old,new", sorted(EXPECTED_NODE))
def test_each_node_transition_has_one_event_type(old, new):
    etype = node_event_type(old, new)
    assert etype == _expected_node_event(old, new)
    assert issubclass(EVENT_DATA_MODELS[etype], NodeTransition)


def test_every_transition_event_type_is_used():
    used = {workflow_event_type(o, n) for o, n in EXPECTED_WORKFLOW} | {
        node_event_type(o, n) for o, n in EXPECTED_NODE}
    transition_types = {t for t, m in EVENT_DATA_MODELS.items()
                        if issubclass(m, (WorkflowTransition, NodeTransition))}
    assert used == transition_types
