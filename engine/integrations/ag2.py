"""``observe(ctx)``: an AG2 / CMBAgent conversation recorded as the step's events.

::

    from engine.integrations.ag2 import observe

    @wf.step()
    def solve(ctx):
        with observe(ctx):                       # no change to the user's agents
            user_proxy.initiate_chat(engineer, message="Compute the TT spectrum ...")

Inside the block, in the step's thread (and the asyncio tasks it starts):

=====================  =========================================  =========================
what                   recorded as                                observed at
=====================  =========================================  =========================
a message              ``agent_message`` (sender, recipient,      ``ConversableAgent.send`` /
                       text), silent ones included                ``a_send``
a tool/function call   ``agent_tool_call`` (name, arguments,      ``ConversableAgent.execute_function``
                       result, or ``error``)                      / ``a_execute_function``
a code execution       ``agent_tool_call`` named                  the code executors'
                       ``execute_code`` (language, code; exit     ``execute_code_blocks`` and the
                       code, output)                              agent's legacy one
a completion           ``cost_update`` (model, tokens, USD)       the runtime logger's
                                                                  ``log_chat_completion``
a speaker change       ``step_progress`` "speaker: NAME"          messages sent to a group
                                                                  chat manager (not those of
                                                                  ``select_speaker``'s own
                                                                  internal agents)
the end of a chat      ``step_progress`` "chat ended: REASON"     IOStream ``termination``
                                                                  events, else a reply of None
a request for human    ``ctx.ask`` (the prompt AG2 shows); the    IOStream ``input``
input                  answer goes back to the agent
=====================  =========================================  =========================

Why these points. AG2 offers three: the IOStream (a context variable, so per thread:
it sees printed messages, ``input()`` and a few events), the runtime logger (global:
every LLM completion with its cost, function uses) and per-agent hooks. Messages come
from ``send``, which every message goes through, printed or not: group chats rebroadcast
each message to every member *silently* and ``initiate_chat(silent=True)`` prints
nothing, so the IOStream misses them; a manager's rebroadcasts (``request_reply=False``
from a ``GroupChatManager``) are skipped, so each message is recorded once, as its
speaker sent it. Tool calls come from ``execute_function``, which both the classic API
and CMBAgent's fork have (the fork emits no ``executed_function`` IO event, and the
runtime logger's ``log_function_use`` misses calls that raise); it gives the error too.
Costs come from the runtime logger, the one place every completion passes through with
the cost AG2 computed from the configured prices — including group chats' hidden
speaker-selection agents, which ``ChatResult.cost`` misses. Human input comes from the
IOStream's ``input``, which ``get_human_input`` calls in both APIs. Per-agent hooks would
need the agents, which ``cmbagent.one_shot`` builds inside; the methods above are
wrapped once per process on their classes (chaining whatever was there), and do
nothing but pass through outside an ``observe`` block.

Chaining. The IOStream in effect when the block starts keeps receiving everything
(printing, the user's own stream); only ``input`` is answered by a human through
``ctx.ask``. A runtime logger the user started keeps receiving every record: while any
block observes, AG2's logger is a tee in front of it, and it is put back after.

Threads. The observer of a block is held in a context variable, so steps observing
conversations in several threads at once never see each other's events. Where AG2 hands
work to a thread of its own (an async chat's completions run on an executor thread), it
passes the IOStream in effect along, and the observer is found through it; work handed
to a thread that carries neither is not recorded.

Human input. ``human_input_mode="ALWAYS"`` / ``"TERMINATE"`` (or any
``get_human_input``) asks the run's human with ``ctx.ask(prompt)``: the step waits
``waiting_approval`` until answered from the widget, the sidebar, ``cmbagent-jupyter
watch``, REST or ``run.answer(...)``. An empty answer lets the agent auto-reply; text is
sent as the human's message; ``exit`` ends the chat (AG2's own convention).

Pause and cancel take effect between messages: each message passes ``ctx.checkpoint()``
first. An exception inside the block (an agent's, a tool's) leaves it as it came, and
fails the step with it.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

try:
    from autogen import ConversableAgent, runtime_logging
    from autogen.agentchat.groupchat import GroupChat, GroupChatManager
    from autogen.io.base import IOStream
    from autogen.logger.base_logger import BaseLogger
except ImportError as exc:  # pragma: no cover - said once, clearly
    raise ImportError("engine.integrations.ag2 needs AG2's classic API (`pip install "
                      "'cmbagent-jupyter[agents]'`) or CMBAgent's autogen fork") from exc

__all__ = ["observe"]

#: The observer of the innermost ``observe`` block of this thread / task.
_current: contextvars.ContextVar[Optional["_Observer"]] = contextvars.ContextVar(
    "cmbagent_ag2_observer", default=None)
#: True while a group chat selects its next speaker: the internal agents it talks to
#: then are not the conversation (their completions' costs are recorded all the same).
_selecting: contextvars.ContextVar[bool] = contextvars.ContextVar("cmbagent_ag2_selecting", default=False)
#: AG2's own context variable holding the IOStream in effect (None: its global default).
_stream_in_effect = IOStream._default_io_stream
#: The agent whose reply is being generated (code executors do not know their agent).
_replying: contextvars.ContextVar[Optional[Any]] = contextvars.ContextVar("cmbagent_ag2_replying", default=None)


@contextmanager
def observe(ctx) -> Iterator[None]:
    """Record the AG2 conversations run inside the block as events of ``ctx``'s step."""
    _install_patches()
    observer = _Observer(ctx)
    token = _current.set(observer)
    try:
        with IOStream.set_default(_ObservedStream(IOStream.get_default(), observer)), _logging():
            yield
    finally:
        _current.reset(token)


def _observer() -> Optional["_Observer"]:
    """The observer of this context: the ``observe`` block's, or, on a thread AG2 started
    for a conversation (``a_generate_oai_reply`` runs the completion on an executor
    thread, handing it the IOStream in effect), the one of that IOStream."""
    observer = _current.get()
    if observer is None:
        stream = _stream_in_effect.get()
        if isinstance(stream, _ObservedStream):
            observer = stream.observer
    return observer


# -- what an observer records ------------------------------------------------------------


def _name(agent: Any) -> str:
    return str(getattr(agent, "name", None) or agent)


def _text(message: Any) -> str:
    """A message's text: a str, or the text parts of a multimodal content list."""
    content = message.get("content") if isinstance(message, dict) else message
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content).strip()
    return str(content)


class _Observer:
    def __init__(self, ctx):
        self.ctx = ctx
        self.speakers: dict[int, str] = {}  # group chat manager id -> last speaker
        self.ended = False  # a termination was recorded for the reply under way
        self.callers: dict[str, str] = {}  # tool name -> the agent that last asked for it

    def message(self, sender: Any, message: Any, recipient: Any, request_reply: Optional[bool]) -> None:
        if _selecting.get() or (isinstance(sender, GroupChatManager) and request_reply is False):
            return  # speaker selection's internal chat, or a rebroadcast of a recorded message
        self.ctx.checkpoint()  # pause and cancel take effect between messages
        if isinstance(recipient, GroupChatManager):
            speaker = _name(sender)
            if self.speakers.get(id(recipient)) != speaker:
                self.speakers[id(recipient)] = speaker
                self.ctx.progress(message=f"speaker: {speaker}")
        if isinstance(message, dict):
            for call in message.get("tool_calls") or ():
                self.callers[str((call.get("function") or {}).get("name"))] = _name(sender)
            if message.get("function_call"):
                self.callers[str(message["function_call"].get("name"))] = _name(sender)
        if isinstance(message, dict) and (message.get("tool_responses") or message.get("role") in ("tool", "function")):
            return  # a tool's result, recorded with its call
        text = _text(message)
        if text:
            role = message.get("role", "assistant") if isinstance(message, dict) else "assistant"
            self.ctx.message(text, agent=_name(sender), role=str(role or "assistant"),
                             recipient=_name(recipient))

    def tool(self, agent: Any, call: dict, ok: bool, result: Any) -> None:
        name = str(call.get("name", "?"))
        try:
            arguments = json.loads(call.get("arguments") or "{}")
        except (TypeError, ValueError):
            arguments = {"arguments": call.get("arguments")}
        if not isinstance(arguments, dict):
            arguments = {"arguments": arguments}
        content = result.get("content") if isinstance(result, dict) else result
        caller = self.callers.get(name) or _name(agent)  # who asked for it, not who ran it
        if ok:
            self.ctx.tool_call(name, arguments, content, agent=caller)
        else:
            self.ctx.tool_call(name, arguments, agent=caller, error=_text(content) or "failed")

    def code(self, agent: Any, blocks: list, exit_code: int, output: str) -> None:
        code = "\n\n".join(_block(b)[1] for b in blocks)
        language = ", ".join(sorted({_block(b)[0] or "?" for b in blocks}))
        self.ctx.tool_call("execute_code", {"language": language, "code": code},
                           {"exit_code": exit_code, "output": output}, agent=_name(agent))

    def completion(self, response: Any, cost: float) -> None:
        usage = getattr(response, "usage", None)
        self.ctx.cost(model=str(getattr(response, "model", None) or "unknown"),
                      input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                      output_tokens=getattr(usage, "completion_tokens", 0) or 0,
                      usd=float(cost or 0.0))

    def terminated(self, reason: str) -> None:
        self.ended = True
        if not _selecting.get():
            self.ctx.progress(message=f"chat ended: {reason}")


def _block(block: Any) -> tuple[str, str]:
    """(language, code) of a code block: a CodeBlock or a (language, code) pair."""
    if hasattr(block, "code"):
        return str(getattr(block, "language", "") or ""), str(block.code)
    language, code = block
    return str(language or ""), str(code)


# -- the IOStream: human input, and termination reasons ------------------------------------------


class _ObservedStream:
    """The IOStream inside an ``observe`` block: everything goes on to the stream that was
    in effect (chained), except ``input``, which a human answers through ``ctx.ask``."""

    def __init__(self, inner: Any, observer: _Observer):
        self.inner = inner
        self.observer = observer

    def print(self, *objects: Any, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
        self.inner.print(*objects, sep=sep, end=end, flush=flush)

    def send(self, message: Any) -> None:
        self.inner.send(message)
        content = getattr(message, "content", message)
        reason = getattr(content, "termination_reason", None)
        if reason:
            self.observer.terminated(str(reason))

    def input(self, prompt: str = "", *, password: bool = False) -> str:
        return self.observer.ctx.ask(prompt.strip() or "Your input for the agents")

    def __getattr__(self, name: str) -> Any:  # anything else the inner stream offers
        return getattr(self.inner, name)


# -- the runtime logger: every completion's cost ----------------------------------------------------


class _TeeLogger(BaseLogger):
    """AG2's runtime logger while observing: completions go to the observer of the
    thread that made them, and every record to the logger that was there (if any)."""

    def __init__(self, inner: Optional[BaseLogger]):
        self.inner = inner

    def _forward(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.inner is not None:
            return getattr(self.inner, name)(*args, **kwargs)
        return None

    def start(self) -> str:
        return self._forward("start") or ""

    def log_chat_completion(self, invocation_id, client_id, wrapper_id, source, request, response,
                            is_cached, cost, start_time) -> None:
        self._forward("log_chat_completion", invocation_id, client_id, wrapper_id, source, request,
                      response, is_cached, cost, start_time)
        observer = _observer()
        if observer is not None and not isinstance(response, str):
            observer.completion(response, 0.0 if is_cached else cost)

    def log_new_agent(self, agent, init_args) -> None:
        self._forward("log_new_agent", agent, init_args)

    def log_event(self, source, name, **kwargs) -> None:
        self._forward("log_event", source, name, **kwargs)

    def log_new_wrapper(self, wrapper, init_args) -> None:
        self._forward("log_new_wrapper", wrapper, init_args)

    def log_new_client(self, client, wrapper, init_args) -> None:
        self._forward("log_new_client", client, wrapper, init_args)

    def log_function_use(self, source, function, args, returns) -> None:
        self._forward("log_function_use", source, function, args, returns)

    def stop(self) -> None:
        pass  # the inner logger is the user's: they stop it

    def get_connection(self) -> Any:
        return self._forward("get_connection")


_logging_lock = threading.Lock()
_logging_users = 0
_saved: tuple[Any, bool] = (None, False)


@contextmanager
def _logging() -> Iterator[None]:
    """AG2's runtime logger is the tee while any block observes (it is process-wide)."""
    global _logging_users, _saved
    with _logging_lock:
        if _logging_users == 0:
            _saved = (runtime_logging.autogen_logger, runtime_logging.is_logging)
            inner = _saved[0] if _saved[1] else None
            runtime_logging.autogen_logger = _TeeLogger(inner)
            runtime_logging.is_logging = True
        _logging_users += 1
    try:
        yield
    finally:
        with _logging_lock:
            _logging_users -= 1
            if _logging_users == 0:
                runtime_logging.autogen_logger, runtime_logging.is_logging = _saved


# -- the wrapped methods -----------------------------------------------------------------------------

_patch_lock = threading.Lock()
_patched = False


def _wrap(cls: type, name: str, make) -> None:
    original = getattr(cls, name, None)
    if original is None or getattr(original, "_cmbagent_observed", False):
        return
    wrapped = functools.wraps(original)(make(original))
    wrapped._cmbagent_observed = True
    setattr(cls, name, wrapped)


def _first(original, hook):
    """``original``, calling ``hook`` with its arguments first (sync or async, as it is)."""
    if inspect.iscoroutinefunction(original):
        async def wrapped(*args, **kwargs):
            hook(*args, **kwargs)
            return await original(*args, **kwargs)
    else:
        def wrapped(*args, **kwargs):
            hook(*args, **kwargs)
            return original(*args, **kwargs)
    return wrapped


def _then(original, hook):
    """``original``, calling ``hook`` with its result and its arguments after it."""
    if inspect.iscoroutinefunction(original):
        async def wrapped(*args, **kwargs):
            result = await original(*args, **kwargs)
            hook(result, *args, **kwargs)
            return result
    else:
        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            hook(result, *args, **kwargs)
            return result
    return wrapped


def _send(original):
    """``send`` / ``a_send``: every message, silent or not."""
    def sent(self, message, recipient, request_reply=None, *args, **kwargs):
        observer = _observer()
        if observer is not None:
            observer.message(self, message, recipient, request_reply)
    return _first(original, sent)


def _execute_function(original):
    """``execute_function`` / ``a_execute_function``: a tool call, its result or error."""
    def executed(outcome, self, func_call, *args, **kwargs):
        observer = _observer()
        if observer is not None:
            observer.tool(self, func_call, *outcome)
    return _then(original, executed)


def _generate_reply(original):
    """``generate_reply`` / ``a_generate_reply``: whose reply code runs in (code executors
    do not know their agent), and a reply of None as the end of a chat when no termination
    event said why (CMBAgent's fork sends none)."""
    def begin(agent):
        observer = _observer()
        if observer is None:
            return None
        ended, observer.ended = observer.ended, False
        return observer, ended, _replying.set(agent)

    def end(state, agent, reply, failed):
        observer, ended, token = state
        _replying.reset(token)
        if reply is None and not failed and not observer.ended and not _selecting.get():
            observer.terminated(f"{_name(agent)} replied nothing (a termination message, or its reply limit)")
        observer.ended = ended or observer.ended

    if inspect.iscoroutinefunction(original):
        async def a_generate_reply(self, *args, **kwargs):
            state, reply, failed = begin(self), None, True
            try:
                reply = await original(self, *args, **kwargs)
                failed = False
                return reply
            finally:
                if state is not None:
                    end(state, self, reply, failed)
        return a_generate_reply

    def generate_reply(self, *args, **kwargs):
        state, reply, failed = begin(self), None, True
        try:
            reply = original(self, *args, **kwargs)
            failed = False
            return reply
        finally:
            if state is not None:
                end(state, self, reply, failed)
    return generate_reply


def _select_speaker(original):
    """``select_speaker`` / ``a_select_speaker``: what happens inside is not the conversation."""
    if inspect.iscoroutinefunction(original):
        async def a_select_speaker(*args, **kwargs):
            token = _selecting.set(True)
            try:
                return await original(*args, **kwargs)
            finally:
                _selecting.reset(token)
        return a_select_speaker

    def select_speaker(*args, **kwargs):
        token = _selecting.set(True)
        try:
            return original(*args, **kwargs)
        finally:
            _selecting.reset(token)
    return select_speaker


def _agent_code_blocks(original):
    """The agent's legacy ``execute_code_blocks`` (code_execution_config without an executor)."""
    def execute_code_blocks(self, code_blocks, *args, **kwargs):
        exit_code, output = original(self, code_blocks, *args, **kwargs)
        observer = _observer()
        if observer is not None:
            observer.code(self, list(code_blocks), exit_code, output)
        return exit_code, output
    return execute_code_blocks


def _executor_code_blocks(original):
    """A code executor's ``execute_code_blocks`` (its agent: the one replying)."""
    def execute_code_blocks(self, code_blocks, *args, **kwargs):
        result = original(self, code_blocks, *args, **kwargs)
        observer = _observer()
        if observer is not None:
            observer.code(_replying.get() or type(self).__name__, list(code_blocks),
                          getattr(result, "exit_code", None), str(getattr(result, "output", "")))
        return result
    return execute_code_blocks


def _install_patches() -> None:
    global _patched
    with _patch_lock:
        if _patched:
            return
        _wrap(ConversableAgent, "send", _send)
        _wrap(ConversableAgent, "a_send", _send)
        _wrap(ConversableAgent, "execute_function", _execute_function)
        _wrap(ConversableAgent, "a_execute_function", _execute_function)
        _wrap(ConversableAgent, "generate_reply", _generate_reply)
        _wrap(ConversableAgent, "a_generate_reply", _generate_reply)
        _wrap(ConversableAgent, "execute_code_blocks", _agent_code_blocks)
        _wrap(GroupChat, "select_speaker", _select_speaker)
        _wrap(GroupChat, "a_select_speaker", _select_speaker)
        from autogen import coding

        for name in ("LocalCommandLineCodeExecutor", "DockerCommandLineCodeExecutor"):
            executor = getattr(coding, name, None)
            if executor is not None:
                _wrap(executor, "execute_code_blocks", _executor_code_blocks)
        _patched = True
