"""Errors raised by the engine. Each carries a stable ``code`` that the wire protocol reuses."""

from __future__ import annotations

import traceback


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""

    code = "engine_error"


class WorkflowDefinitionError(EngineError, ValueError):
    """The workflow cannot be built: a cycle, an unknown dependency, a duplicate step."""

    code = "invalid_workflow"


class IllegalTransition(EngineError):
    """A state change that the transition table does not allow. Nothing was changed."""

    code = "illegal_transition"

    def __init__(self, entity: str, old: str, new: str):
        self.entity, self.old, self.new = entity, old, new
        super().__init__(f"{entity}: illegal transition {old!s} -> {new!s}")


class UnknownRun(EngineError, KeyError):
    code = "unknown_run"

    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(f"unknown run {run_id!r}")

    def __str__(self) -> str:  # KeyError would quote the whole message again
        return self.args[0]


class UnknownNode(EngineError, KeyError):
    code = "unknown_node"

    def __init__(self, run_id: str, node_id: str):
        self.run_id, self.node_id = run_id, node_id
        super().__init__(f"run {run_id!r} has no node {node_id!r}")

    def __str__(self) -> str:
        return self.args[0]


class RunBusy(EngineError):
    """The run is executing in a live process: it cannot be deleted or resumed now."""

    code = "run_busy"


class CommandRejected(EngineError):
    """A control command that is not legal now (or whose executor is gone)."""

    code = "command_rejected"

    def __init__(self, message: str, code: str | None = None):
        if code:
            self.code = code
        super().__init__(message)


class ExecutorLost(CommandRejected):
    code = "executor_lost"


class LeaseLost(EngineError):
    """This process no longer owns the run (another process marked it lost)."""

    code = "lease_lost"


class LogConflict(EngineError):
    """A commit does not continue the run's log where it stands (its first seq is not the
    stored last seq + 1): someone else wrote to the log. Nothing of the commit is written."""

    code = "log_conflict"


class WorkerLost(EngineError):
    """A step's attempt was lost with the Dask worker running it (the worker died or was
    cut off from the scheduler). Recorded as that attempt's error; the step's retries apply."""

    code = "worker_lost"


class StoreError(EngineError):
    """The store cannot be opened or used as configured."""

    code = "store_error"


class Cancelled(BaseException):
    """Raised inside step code at ``ctx.checkpoint()`` when the run is being cancelled.

    A BaseException so that a step's broad ``except Exception`` does not swallow it.
    """


def error_info(exc: BaseException) -> dict:
    """An exception as the log records a step's error: type, message, traceback.

    Never raises: the exception is the step's, and so is its ``__str__``. One that
    cannot be turned into text is recorded by its ``repr`` (or, failing that, by its
    type), and the step fails all the same.
    """
    return {"type": type(exc).__name__, "message": _message(exc),
            "traceback": "".join(traceback.format_exception(exc))}


def _message(exc: BaseException) -> str:
    try:
        return str(exc) or repr(exc)
    except Exception:
        pass
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"
