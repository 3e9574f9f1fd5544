"""Answering a run's questions and approvals from the terminal (``cmbagent-jupyter watch``).

Lines typed on standard input answer the run's oldest pending request: for a question
(``ctx.ask``) the line is the answer; for an approval (``ctx.approve``) it starts with
``y`` / ``yes`` / ``approve`` or ``n`` / ``no`` / ``reject``, and the rest of the line is
the comment. Each answer is an ``answer`` / ``approve`` / ``reject`` command, like the
widget's, so whoever answers first wins and the others are told it was answered.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Optional, TextIO

_YES = {"y", "yes", "approve", "ok"}
_NO = {"n", "no", "reject"}


def describe(request: dict) -> str:
    """One line saying what a pending request asks and how to answer it here."""
    if request.get("kind") == "question":
        choices = request.get("choices")
        how = f"one of: {' / '.join(choices)}" if choices else "type your answer"
        return f"question on {request['node_id']}: {request['prompt']}  [{how}, then Enter]"
    return f"approval pending on {request['node_id']}: {request['prompt']}  [y or n, optional comment, then Enter]"


def command_for(request: dict, line: str) -> tuple[str, dict] | str:
    """The command (action, payload) a typed line makes for ``request``, or why it makes none."""
    text = line.strip()
    if request.get("kind") == "question":
        return "answer", {"text": text}
    word, _, comment = text.partition(" ")
    if word.lower() in _YES:
        action = "approve"
    elif word.lower() in _NO:
        action = "reject"
    else:
        return f"answer the approval on {request['node_id']} with y or n (and an optional comment)"
    return action, ({"comment": comment.strip()} if comment.strip() else {})


class TerminalAnswers:
    """Lines of ``inp``, read on a thread of their own (reading a terminal blocks), handed
    to the event loop; ``send`` turns one into the command answering the run's oldest
    pending request."""

    def __init__(self, inp: TextIO, loop: asyncio.AbstractEventLoop):
        self._lines: asyncio.Queue[Optional[str]] = asyncio.Queue()
        self._loop = loop
        threading.Thread(target=self._read, args=(inp,), daemon=True, name="cmbagent-watch-stdin").start()

    def _read(self, inp: TextIO) -> None:
        while True:
            try:
                line = inp.readline()
            except (OSError, ValueError):  # closed
                line = ""
            try:
                self._loop.call_soon_threadsafe(self._lines.put_nowait, line or None)
            except RuntimeError:  # the loop is gone: the watch has ended
                return
            if not line:
                return

    def line(self) -> Optional[str]:
        """A line typed since the last call, if any (None at end of input too)."""
        try:
            return self._lines.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def send(self, client, run_id: str, pending: list[dict], line: str) -> str:
        """Answer the oldest of ``pending`` with ``line``; what happened, to tell the user."""
        if not pending:
            return "nothing is waiting for an answer"
        request = pending[0]
        made = command_for(request, line)
        if isinstance(made, str):
            return made
        action, payload = made
        ack = await client.command(run_id, action, request["node_id"], payload)
        if not ack.get("ok"):
            return f"not accepted: {ack.get('error')}"
        return f"sent: {action} on {request['node_id']}"
