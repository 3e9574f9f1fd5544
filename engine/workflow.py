"""Declaring workflows: ``Workflow`` and its ``@wf.step`` decorator."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import networkx as nx

from .errors import WorkflowDefinitionError
from .events import escape_surrogates, loggable


@dataclass(frozen=True)
class Step:
    """One node of a workflow: a function and what it depends on."""

    id: str
    fn: Callable[..., Any]
    deps: tuple[str, ...] = ()
    retries: int = 0
    retry_delay: float = 0.5
    label: str = ""
    description: str = ""
    wants_ctx: bool = field(default=False, compare=False)
    #: The dependencies whose results the function takes as keyword arguments.
    inputs: tuple[str, ...] = field(default=(), compare=False)

    def spec(self) -> dict:
        """The node's description as recorded in the event log."""
        return {"id": self.id, "label": self.label or self.id, "description": self.description,
                "deps": list(self.deps), "retries": self.retries}


def make_step(fn: Callable[..., Any], *, name: Optional[str] = None, deps: Iterable[str] = (),
              retries: int = 0, retry_delay: float = 0.5, label: str = "",
              description: Optional[str] = None) -> Step:
    """Build a Step, checking that the function's parameters can all be supplied."""
    if not callable(fn):
        raise WorkflowDefinitionError(f"step {fn!r} is not callable")
    step_id = name or fn.__name__
    if not isinstance(step_id, str) or not step_id:
        raise WorkflowDefinitionError(f"step name must be a non-empty string, not {step_id!r}")
    deps = tuple(deps)
    if len(set(deps)) != len(deps):
        raise WorkflowDefinitionError(f"step {step_id!r} lists a dependency twice: {list(deps)}")
    if step_id in deps:
        raise WorkflowDefinitionError(f"step {step_id!r} depends on itself (a cycle)")
    if not isinstance(retries, int) or retries < 0:
        raise WorkflowDefinitionError(f"step {step_id!r}: retries must be an int >= 0")
    wants_ctx = False
    params = inspect.signature(fn).parameters
    for p in params.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == "ctx":
            wants_ctx = True
        elif p.name not in deps and p.default is p.empty:
            raise WorkflowDefinitionError(
                f"step {step_id!r}: parameter {p.name!r} is neither 'ctx' nor one of its "
                f"dependencies {list(deps)} and has no default"
            )
    doc = inspect.getdoc(fn) or ""
    # A **kwargs parameter takes every dependency's result (deps known only at run time).
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return Step(step_id, fn, deps, retries, retry_delay, label,
                description if description is not None else doc.split("\n\n")[0], wants_ctx,
                tuple(d for d in deps if takes_all or d in params))


def definable(fields: dict) -> bool:
    """Whether a definition's text (names, labels, descriptions) can be stored as it is.

    A definition shapes the DAG rather than reports data: text with a lone surrogate is
    refused (WorkflowDefinitionError) where a report would have it escaped.
    """
    return loggable(fields, "a definition") is fields


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

    def __init__(self, name: str, description: str = ""):
        if not name:
            raise WorkflowDefinitionError("a workflow needs a name")
        self.name = name
        self.description = description
        self.steps: dict[str, Step] = {}

    def step(self, name: Optional[str] = None, *, deps: Iterable[str] = (), retries: int = 0,
             retry_delay: float = 0.5, label: str = "", description: Optional[str] = None):
        """Decorator: add the function as a step. Unknown deps and cycles are refused here."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(make_step(fn, name=name, deps=deps, retries=retries,
                               retry_delay=retry_delay, label=label, description=description))
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
        from .executor import start_run
        from .store import open_store

        self.validate()
        return start_run(self, store if store is not None else open_store(),
                         max_workers=max_workers, owner=owner, run_id=run_id, dask=dask)

    def run(self, store=None, *, timeout: Optional[float] = None, **kwargs):
        """``start()`` then ``wait()``: returns the finished ``Run``."""
        run = self.start(store, **kwargs)
        run.wait(timeout)
        return run

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {len(self.steps)} steps>"
