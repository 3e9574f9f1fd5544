"""The scripted OpenAI-compatible endpoint, through the real ``openai`` client."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

openai = pytest.importorskip("openai")

from engine.integrations.scripted_llm import ScriptedLLM, reply, tool_call  # noqa: E402


def client(llm: ScriptedLLM):
    return openai.OpenAI(base_url=llm.base_url, api_key="any", max_retries=0)


def test_replies_in_order_with_tool_calls_and_usage():
    script = [reply(tool_calls=[tool_call("camb", {"H0": 67.4})], usage=(12, 3)),
              reply("done", model="other-model")]
    with ScriptedLLM(script) as llm:
        c = client(llm)
        first = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "go now"}])
        [call] = first.choices[0].message.tool_calls
        assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_1", "camb", {"H0": 67.4})
        assert first.choices[0].finish_reason == "tool_calls"
        assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (12, 3)
        second = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "and then"}])
        assert second.choices[0].message.content == "done" and second.model == "other-model"
        assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (2, 1)  # counted as words
        with pytest.raises(openai.InternalServerError, match="script exhausted after 2 replies"):
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "more"}])
        assert [r["messages"][0]["content"] for r in llm.requests] == ["go now", "and then", "more"]


def test_a_function_of_the_request_and_streaming():
    def echo(request):
        return reply(f"you said {request['messages'][-1]['content']}", usage=(5, 3))

    with ScriptedLLM(echo) as llm:
        stream = client(llm).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "you said hi"
        assert chunks[-1].usage.total_tokens == 8


def test_served_from_a_json_script_on_the_command_line(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"content": "hello", "usage": [1, 1]}]))
    proc = subprocess.Popen([sys.executable, "-m", "engine.integrations.scripted_llm", str(script)],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("OPENAI_BASE_URL=http://127.0.0.1:")
        c = openai.OpenAI(base_url=line.split("=", 1)[1], api_key="any", max_retries=0)
        answer = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert answer.choices[0].message.content == "hello"
    finally:
        proc.terminate()
        proc.wait(10)
