"""cmbagent-jupyter's workflow engine: DAGs of steps, a state machine and a durable event log.

    from engine import Workflow, open_store

    wf = Workflow("analysis")

    @wf.step()
    def load(ctx):
        return [1, 2, 3]

    run = wf.start()          # non-blocking; the default store
    run.wait()

This package imports no Jupyter, Tornado or widget code.
"""

from .context import StepContext
from .errors import (
    Cancelled,
    CommandRejected,
    EngineError,
    ExecutorLost,
    IllegalTransition,
    RunBusy,
    StoreError,
    UnknownNode,
    UnknownRun,
    WorkflowDefinitionError,
)
from .run import Run
from .states import NodeState, WorkflowState
from .store import Store, default_url, open_store
from .workflow import Workflow

__version__ = "0.1.0"

__all__ = [
    "Workflow", "Run", "StepContext", "open_store", "default_url", "Store",
    "WorkflowState", "NodeState",
    "EngineError", "WorkflowDefinitionError", "IllegalTransition", "UnknownRun", "UnknownNode",
    "CommandRejected", "ExecutorLost", "StoreError", "Cancelled", "RunBusy",
]
