"""Workflows that cannot run are refused up front, with an error naming the problem."""

from __future__ import annotations

import pytest

from engine import Workflow, WorkflowDefinitionError
from engine.workflow import make_step
from engine_support import check_log, of_type


def test_self_dependency_is_a_cycle():
    wf = Workflow("loop")
    with pytest.raises(WorkflowDefinitionError, match="step 'again' depends on itself \\(a cycle\\)"):
        @wf.step(deps=["again"])
        def again():
            pass


def test_a_longer_cycle_is_refused_before_the_run_starts(store):
    wf = Workflow("circle")

    @wf.step()
    def a():
        pass

    @wf.step(deps=["a"])
    def b(a):
        pass

    wf.steps["a"] = make_step(lambda b: None, name="a", deps=["b"])  # edited by hand into a cycle
    with pytest.raises(WorkflowDefinitionError,
                       match="workflow 'circle' has a cycle: (a -> b -> a|b -> a -> b)"):
        wf.start(store=store)
    assert store.runs() == []  # nothing was recorded


def test_unknown_dependency():
    wf = Workflow("typo")
    with pytest.raises(WorkflowDefinitionError, match=r"step 'fit' depends on unknown step\(s\) \['laod'\]"):
        @wf.step(deps=["laod"])
        def fit(laod):
            pass
    assert "fit" not in wf.steps


def test_duplicate_step_name():
    wf = Workflow("twice")

    @wf.step()
    def load():
        pass

    with pytest.raises(WorkflowDefinitionError, match="duplicate step name 'load' in workflow 'twice'"):
        wf.step("load")(lambda: None)


def test_parameter_that_is_neither_ctx_nor_a_dependency():
    wf = Workflow("params")

    @wf.step()
    def load():
        pass

    with pytest.raises(WorkflowDefinitionError,
                       match=r"step 'fit': parameter 'data' is neither 'ctx' nor "
                             r"one of its dependencies \['load'\]"):
        @wf.step(deps=["load"])
        def fit(ctx, load, data):
            pass

    @wf.step(deps=["load"])
    def fit_with_default(load, data=3):  # a default makes it fine
        return data


@pytest.mark.parametrize("kwargs,message", [
    ({"deps": ["a", "a"]}, "lists a dependency twice"),
    ({"retries": -1}, "retries must be an int >= 0"),
])
def test_other_bad_step_options(kwargs, message):
    wf = Workflow("options")
    wf.step("a")(lambda: None)
    with pytest.raises(WorkflowDefinitionError, match=message):
        wf.step("b", **kwargs)(lambda a=None: None)


def test_empty_workflow_and_missing_name(store):
    with pytest.raises(WorkflowDefinitionError, match="has no steps"):
        Workflow("empty").start(store=store)
    with pytest.raises(WorkflowDefinitionError, match="needs a name"):
        Workflow("")
    assert store.runs() == []


def test_bad_steps_added_at_run_time_are_refused_inside_the_step(store):
    wf = Workflow("bad planner")
    refusals = []

    @wf.step()
    def planner(ctx):
        for bad in (lambda: ctx.add_step(lambda: 1, name="planner"),
                    lambda: ctx.add_step(lambda ghost: 1, name="x", deps=["ghost"]),
                    lambda: ctx.add_step(lambda data: 1, name="y")):
            with pytest.raises(WorkflowDefinitionError) as info:
                bad()
            refusals.append(str(info.value))
        ctx.add_step(lambda planner: planner + 1, name="ok", deps=["planner"])
        return 1

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed"
    assert run.result("ok") == 2
    assert "duplicate step name 'planner'" in refusals[0]
    assert "unknown step(s) ['ghost']" in refusals[1]
    assert "parameter 'data'" in refusals[2]
    events = check_log(run)
    assert [u["data"]["added_nodes"][0]["id"] for u in of_type(events, "dag_updated")] == ["ok"]


@pytest.mark.parametrize("where", ["workflow name", "workflow description", "step name", "step label"])
def test_a_definition_the_store_cannot_hold_is_refused_clearly_at_start(store, where):
    wf = Workflow("bad\udc80" if where == "workflow name" else "fine",
                  description="\ud800" if where == "workflow description" else "")
    wf.step("s\udcff" if where == "step name" else "s",
            label="\udcff" if where == "step label" else "")(lambda: 1)
    with pytest.raises(WorkflowDefinitionError, match="without lone surrogates"):
        wf.start(store=store)
    assert store.runs() == []
