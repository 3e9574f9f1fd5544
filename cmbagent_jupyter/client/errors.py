"""What the client raises."""

from __future__ import annotations


class ClientError(Exception):
    """The client cannot do what was asked (closed, or the server refused it)."""


class RunNotFound(ClientError):
    """The server does not know the run (or this user may not see it)."""

    def __init__(self, run_id: str, message: str = ""):
        super().__init__(message or f"unknown run {run_id!r}")
        self.run_id = run_id
