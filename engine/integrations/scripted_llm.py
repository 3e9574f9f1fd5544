"""An offline, deterministic OpenAI-compatible endpoint, for reproducible demos and tests.

It serves ``POST /v1/chat/completions`` (and ``GET /v1/models``) on 127.0.0.1 and
answers each request with the next reply of a script, so the real ``openai`` client, and
everything built on it (AG2, CMBAgent), runs unchanged and gives the same conversation
every time, with no network and no key::

    from engine.integrations.scripted_llm import ScriptedLLM, reply, tool_call

    script = [
        reply(tool_calls=[tool_call("camb_spectrum", {"lmax": 2000})], usage=(120, 18)),
        reply("The spectrum peaks at l=220. TERMINATE", usage=(160, 12)),
    ]
    with ScriptedLLM(script) as llm:
        llm_config = {"config_list": llm.config_list(price=(0.001, 0.002))}
        # or: os.environ["OPENAI_BASE_URL"] = llm.base_url  (any key works)

A script is a list whose items are replies (``reply(...)``) or functions of the request
(its JSON body, a dict) returning one, used in order; or one such function for every
request (e.g. to answer a group chat's speaker selection by what it asks). A request past
the end of the script gets HTTP 500 with "script exhausted" (the client raises), so a
conversation that goes longer than planned fails loudly. ``llm.requests`` holds every
request body received, in order.

Token usage is what the reply says (``usage=(prompt, completion)``), else counted as
words of the request's message contents and of the reply: deterministic either way, so costs
computed from configured prices are too. Streaming is served when asked for
(``"stream": true``: one content chunk, then the usage chunk), for clients that stream.

From a terminal, ``python -m engine.integrations.scripted_llm script.json [--port N]``
serves a script written as a JSON list of replies (``{"content": ..., "tool_calls":
[{"name": ..., "arguments": {...}}], "usage": [p, c]}``) until interrupted.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional, Sequence, Union

Reply = dict
Script = Union[Sequence[Union[Reply, Callable[[dict], Reply]]], Callable[[dict], Reply]]

#: ``created`` in every completion: a fixed time keeps responses byte-identical.
CREATED = 1_700_000_000


def tool_call(name: str, arguments: Optional[dict] = None) -> dict:
    """A function call the model asks for (its id is given when served: call_1, call_2...)."""
    return {"name": name, "arguments": dict(arguments or {})}


def reply(content: Optional[str] = None, *, tool_calls: Iterable[dict] = (),
          usage: Optional[tuple[int, int]] = None, model: Optional[str] = None) -> Reply:
    """One assistant reply: text and/or tool calls, with its token usage
    ``(prompt_tokens, completion_tokens)`` (counted as words when not given) and the
    model it names (the request's when not given)."""
    return {"content": content, "tool_calls": list(tool_calls), "usage": usage, "model": model}


class ScriptedLLM:
    """The endpoint, serving ``script`` on 127.0.0.1 from a thread (``with`` or ``start()`` /
    ``stop()``). ``base_url`` is what an OpenAI client's ``base_url`` (or
    ``OPENAI_BASE_URL``) takes."""

    def __init__(self, script: Script, port: int = 0, api_key: str = "scripted"):
        self._script = script
        self._lock = threading.Lock()
        self._next = 0
        self._calls = 0
        self.api_key = api_key
        self.requests: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def config_list(self, model: str = "scripted-model",
                    price: Optional[tuple[float, float]] = None) -> list[dict]:
        """An AG2 ``config_list`` pointing at this endpoint; ``price`` is USD per 1,000
        (input, output) tokens, which AG2 uses to cost every completion."""
        entry: dict[str, Any] = {"model": model, "base_url": self.base_url, "api_key": self.api_key}
        if price is not None:
            entry["price"] = list(price)
        return [entry]

    def serve_forever(self) -> None:
        """Serve on this thread until interrupted (``start()`` serves from another one)."""
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def start(self) -> "ScriptedLLM":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="scripted-llm")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "ScriptedLLM":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def remaining(self) -> int:
        """Replies of a list script not served yet."""
        return 0 if callable(self._script) else len(self._script) - self._next

    def complete(self, request: dict) -> dict:
        """The ChatCompletion answering ``request`` (what the HTTP handler serves)."""
        with self._lock:
            self.requests.append(request)
            if callable(self._script):
                item: Any = self._script
            elif self._next < len(self._script):
                item = self._script[self._next]
                self._next += 1
            else:
                raise ScriptExhausted(f"script exhausted after {len(self._script)} replies")
            first_call = self._calls
            rep = item(request) if callable(item) else item
            self._calls += len(rep.get("tool_calls") or ())
            number = len(self.requests)
        return _completion(request, rep, number, first_call)


class ScriptExhausted(Exception):
    pass


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(_words(v) for v in value.values())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    return 0


def _completion(request: dict, rep: dict, number: int, first_call: int) -> dict:
    calls = [{"id": f"call_{first_call + i + 1}", "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments") or {})}}
             for i, c in enumerate(rep.get("tool_calls") or ())]
    message: dict[str, Any] = {"role": "assistant", "content": rep.get("content")}
    if calls:
        message["tool_calls"] = calls
    usage = rep.get("usage")
    if usage is None:
        usage = (sum(_words(m.get("content")) for m in request.get("messages") or () if isinstance(m, dict)),
                 _words(rep.get("content")) + _words([c["function"]["arguments"] for c in calls]))
    prompt, completion = (int(u) for u in usage)
    return {
        "id": f"chatcmpl-scripted-{number}",
        "object": "chat.completion",
        "created": CREATED,
        "model": rep.get("model") or request.get("model", "scripted-model"),
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }


def _chunks(done: dict) -> list[dict]:
    """A completion as the stream of chunks a streaming client reads."""
    message = done["choices"][0]["message"]
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
    base = {"id": done["id"], "object": "chat.completion.chunk", "created": done["created"],
            "model": done["model"]}
    return [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {},
                              "finish_reason": done["choices"][0]["finish_reason"]}]},
        {**base, "choices": [], "usage": done["usage"]},
    ]


def _handler(llm: ScriptedLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out as two writes: without TCP_NODELAY, Nagle's algorithm
            # and the client's delayed ACK hold the body back ~40 ms on every request.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args: Any) -> None:  # quiet: tests and demos read their own output
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [
                    {"id": "scripted-model", "object": "model", "created": CREATED, "owned_by": "scripted"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            try:
                request = json.loads(body or b"{}")
                done = llm.complete(request)
            except ScriptExhausted as exc:
                self._send(500, {"error": {"message": str(exc), "type": "script_exhausted"}})
                return
            except Exception as exc:  # a script function's own error, said to the client
                self._send(500, {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "script_error"}})
                return
            if not request.get("stream"):
                self._send(200, done)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in _chunks(done):
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True

    return Handler


def load_script(path: str) -> list[Reply]:
    """A script from a JSON file: a list of replies as ``reply()`` builds them."""
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    return [reply(i.get("content"), tool_calls=[tool_call(c["name"], c.get("arguments"))
                                                for c in i.get("tool_calls", ())],
                  usage=tuple(i["usage"]) if i.get("usage") else None, model=i.get("model"))
            for i in items]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.integrations.scripted_llm",
                                     description="Serve a scripted OpenAI-compatible endpoint on 127.0.0.1.")
    parser.add_argument("script", help="a JSON list of replies")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    llm = ScriptedLLM(load_script(args.script), port=args.port)
    print(f"OPENAI_BASE_URL={llm.base_url}", flush=True)
    try:
        llm.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
