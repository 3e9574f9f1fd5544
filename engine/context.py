"""``ctx``: what a step's code uses to report progress and to cooperate with control."""

from __future__ import annotations

import math
import mimetypes
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from .workflow import make_step

if TYPE_CHECKING:
    from .executor import Executor


class StepContext:
    """Passed to a step as its ``ctx`` parameter. Every call records one event.

    ``executor`` is the run's Executor for a step running in its process, or, for a
    step on a Dask worker, engine.dask's link back to it. Both offer the same calls:
    record, record_file, attempt_of, checkpoint, request_approval, add_step.
    """

    def __init__(self, executor: "Executor", node_id: str):
        self._ex = executor
        self.node_id = node_id
        self.run_id = executor.run_id

    @property
    def attempt(self) -> int:
        """1 on the first attempt, 2 on the first retry, ..."""
        return self._ex.attempt_of(self.node_id)

    def progress(self, fraction: Optional[float] = None, message: Optional[str] = None) -> None:
        """Report progress in [0, 1] and/or a status line (``step_progress``)."""
        if fraction is not None:
            fraction = float(fraction)
            if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
                raise ValueError(f"progress must be between 0 and 1, not {fraction}")
        data: dict[str, Any] = {"node_id": self.node_id}
        if fraction is not None:
            data["progress"] = fraction
        if message is not None:
            data["message"] = str(message)
        self._ex.record("step_progress", data)

    def message(self, text: str, agent: str = "assistant", role: str = "assistant") -> None:
        """An agent said something (``agent_message``)."""
        self._ex.record("agent_message", {"node_id": self.node_id, "agent": str(agent),
                                          "message": str(text), "role": str(role)})

    def thinking(self, text: str, agent: str = "assistant") -> None:
        """An agent's intermediate reasoning (``agent_thinking``)."""
        self._ex.record("agent_thinking", {"node_id": self.node_id, "agent": str(agent),
                                           "content": str(text)})

    def tool_call(self, tool: str, arguments: Optional[dict] = None, result: Any = None,
                  agent: str = "assistant") -> None:
        """An agent called a tool (``agent_tool_call``). Arguments and result must be JSON."""
        self._ex.record("agent_tool_call", {"node_id": self.node_id, "agent": str(agent),
                                            "tool": str(tool), "arguments": dict(arguments or {}),
                                            "result": result}, validate=True)

    def cost(self, model: str, input_tokens: int = 0, output_tokens: int = 0, usd: float = 0.0) -> None:
        """Tokens and money spent (``cost_update``); totals add up per node and per run."""
        if input_tokens < 0 or output_tokens < 0 or usd < 0:
            raise ValueError("cost: tokens and usd must be >= 0")
        self._ex.record("cost_update", {"node_id": self.node_id, "model": str(model),
                                        "input_tokens": int(input_tokens),
                                        "output_tokens": int(output_tokens), "usd": float(usd)})

    def metric(self, name: str, value: float, step: Optional[int] = None,
               unit: Optional[str] = None) -> None:
        """A named number (``metric_update``), e.g. a chi-square or a loss."""
        data: dict[str, Any] = {"node_id": self.node_id, "name": str(name), "value": float(value)}
        if step is not None:
            data["step"] = int(step)
        if unit is not None:
            data["unit"] = str(unit)
        self._ex.record("metric_update", data)

    def file(self, path: str | os.PathLike, description: Optional[str] = None) -> str:
        """Record a file the step wrote (``file_created``, or ``file_updated`` the next times)."""
        path = os.path.abspath(os.fspath(path))
        data: dict[str, Any] = {"node_id": self.node_id, "path": path}
        if os.path.exists(path):
            data["size"] = os.path.getsize(path)
        mime = mimetypes.guess_type(path)[0]
        if mime:
            data["mime"] = mime
        if description is not None:
            data["description"] = str(description)
        self._ex.record_file(self.node_id, data)
        return path

    def checkpoint(self) -> None:
        """A safe point: wait here while the run is paused; raise ``Cancelled`` on cancel."""
        self._ex.checkpoint(self.node_id)

    def approve(self, prompt: str) -> bool:
        """Ask a human; block until approved (True) or rejected (False)."""
        return self._ex.request_approval(self.node_id, str(prompt))

    def add_step(self, fn: Callable[..., Any], deps: Iterable[str] = (), *, name: Optional[str] = None,
                 retries: int = 0, retry_delay: float = 0.5, label: str = "",
                 description: Optional[str] = None) -> str:
        """Add a step to the running workflow (``dag_updated``); returns its node id."""
        step = make_step(fn, name=name, deps=deps, retries=retries, retry_delay=retry_delay,
                         label=label, description=description)
        self._ex.add_step(step, by_node=self.node_id)
        return step.id

    def __repr__(self) -> str:
        return f"<StepContext run={self.run_id} node={self.node_id}>"
