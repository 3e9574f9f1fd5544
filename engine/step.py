"""A workflow's step: a function and what it depends on (``Step``, built by ``make_step``)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from .errors import WorkflowDefinitionError
from .events import loggable
from .output import check_mode


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
    #: What happens to its output (engine.output): "tee", "capture", "off"; None: the
    #: workflow's choice.
    capture_output: Optional[str] = field(default=None, compare=False)

    def spec(self) -> dict:
        """The node's description as recorded in the event log."""
        return {"id": self.id, "label": self.label or self.id, "description": self.description,
                "deps": list(self.deps), "retries": self.retries}


def make_step(fn: Callable[..., Any], *, name: Optional[str] = None, deps: Iterable[str] = (),
              retries: int = 0, retry_delay: float = 0.5, label: str = "",
              description: Optional[str] = None, capture_output: Optional[str] = None) -> Step:
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
    if capture_output is not None:
        try:
            check_mode(capture_output, f"step {step_id!r}")
        except ValueError as exc:
            raise WorkflowDefinitionError(str(exc)) from None
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
                tuple(d for d in deps if takes_all or d in params), capture_output)


def definable(fields: dict) -> bool:
    """Whether a definition's text (names, labels, descriptions) can be stored as it is.

    A definition shapes the DAG rather than reports data: text with a lone surrogate is
    refused (WorkflowDefinitionError) where a report would have it escaped.
    """
    return loggable(fields, "a definition") is fields
