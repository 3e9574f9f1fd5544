"""Declaring workflows: ``Workflow`` and its ``@wf.step`` decorator; ``wf.start()``."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional

import networkx as nx

from .errors import WorkflowDefinitionError
from .events import escape_surrogates
from .output import check_mode
from .resume import resume_run
from .run import start_run
from .step import Step, definable, make_step
from .store import open_store


class Workflow:
    """A named DAG of steps.

    >>> wf = Workflow("analysis")
    >>> @wf.step()
    ... def load(ctx): return 1
    >>> @wf.step(deps=["load"])
    ... def fit(ctx, load): return load + 1
    >>> wf.run().state  # doctest: +SKIP
    <WorkflowState.completed: 'completed'>
    """

    def __init__(self, name: str, description: str = "", *, capture_output: str = "tee"):
        """``capture_output``: what happens to what the steps print, log or warn
        (engine.output): ``"tee"`` records it as the step's events and still shows it in
        the cell, ``"capture"`` records it only, ``"off"`` leaves it alone. A step's own
        ``capture_output=`` wins."""
        if not name:
            raise WorkflowDefinitionError("a workflow needs a name")
        try:
            self.capture_output = check_mode(capture_output, f"workflow {name!r}")
        except ValueError as exc:
            raise WorkflowDefinitionError(str(exc)) from None
        self.name = name
        self.description = description
        self.steps: dict[str, Step] = {}

    def step(self, name: Optional[str] = None, *, deps: Iterable[str] = (), retries: int = 0,
             retry_delay: float = 0.5, label: str = "", description: Optional[str] = None,
             capture_output: Optional[str] = None):
        """Decorator: add the function as a step. Unknown deps and cycles are refused here."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(make_step(fn, name=name, deps=deps, retries=retries,
                               retry_delay=retry_delay, label=label, description=description,
                               capture_output=capture_output))
            return fn

        if callable(name):  # used bare: @wf.step
            fn, name = name, None
            return decorate(fn)
        return decorate

    def add(self, step: Step) -> Step:
        if step.id in self.steps:
            raise WorkflowDefinitionError(f"duplicate step name {step.id!r} in workflow {self.name!r}")
        unknown = [d for d in step.deps if d not in self.steps]
        if unknown:
            raise WorkflowDefinitionError(
                f"step {step.id!r} depends on unknown step(s) {unknown}; declare dependencies first"
            )
        self.steps[step.id] = step
        return step

    def validate(self) -> None:
        """Refuse a workflow with no steps, an unknown dependency, a cycle, or text the
        store cannot hold in its definition."""
        if not self.steps:
            raise WorkflowDefinitionError(f"workflow {self.name!r} has no steps")
        if not definable({"name": self.name, "description": self.description}):
            raise WorkflowDefinitionError(
                f"workflow {escape_surrogates(str(self.name))!r}: its name and description "
                "must be text without lone surrogates")
        for s in self.steps.values():
            if not definable(s.spec()):
                raise WorkflowDefinitionError(
                    f"step {escape_surrogates(s.id)!r}: names, labels and descriptions must be "
                    "text without lone surrogates")
        seen: set[str] = set()
        in_order = True  # steps are added dependencies-first, so this is the usual case
        for s in self.steps.values():
            for d in s.deps:
                if d not in self.steps:
                    raise WorkflowDefinitionError(f"step {s.id!r} depends on unknown step {d!r}")
                in_order = in_order and d in seen
            seen.add(s.id)
        if in_order:
            return  # declaration order is a topological order: no cycle
        g = nx.DiGraph()
        g.add_nodes_from(self.steps)
        g.add_edges_from((d, s.id) for s in self.steps.values() for d in s.deps)
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            return
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        raise WorkflowDefinitionError(f"workflow {self.name!r} has a cycle: {path}")

    def start(self, store=None, *, max_workers: Optional[int] = None, owner: Optional[str] = None,
              run_id: Optional[str] = None, dask: Any = None):
        """Start a run in this process and return its ``Run`` handle at once.

        ``max_workers``: how many steps may be running at once (default: CPUs + 4, at
        most 32; with ``dask``, no limit: Dask queues what its workers cannot take).
        ``dask``: a ``distributed.Client`` or a scheduler address; the step bodies then
        run on that cluster while the executor and the run's log stay in this process
        (see engine.dask).
        """
        self.validate()
        steps = {sid: s if s.capture_output else dataclasses.replace(s, capture_output=self.capture_output)
                 for sid, s in self.steps.items()}
        return start_run(store if store is not None else open_store(), self.name, steps,
                         description=self.description, max_workers=max_workers, owner=owner,
                         run_id=run_id, dask=dask)

    def resume(self, run_id: str, store=None, *, dask: Any = None, max_workers: Optional[int] = None,
               rerun: Iterable[str] = ()):
        """Continue run ``run_id`` (failed, cancelled, or whose process died) in this process.

        Completed steps whose code is unchanged keep their stored results; everything else
        runs again, and ``rerun`` names more steps to run again (with what is downstream).
        See engine.resume for the rules. Returns the ``Run`` at once, like ``start``.
        """
        self.validate()
        return resume_run(store if store is not None else open_store(), self.name, self.steps,
                          run_id, dask=dask, max_workers=max_workers, rerun=rerun)

    def run(self, store=None, *, timeout: Optional[float] = None, **kwargs):
        """``start()`` then ``wait()``: returns the finished ``Run``."""
        run = self.start(store, **kwargs)
        run.wait(timeout)
        return run

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {len(self.steps)} steps>"
