"""``observe(ctx)``: AG2 conversations recorded as a step's events, offline: AG2's classic
API and the real ``openai`` client talking to the scripted endpoint."""

from __future__ import annotations

import json
import sys
import threading

import pytest

autogen = pytest.importorskip("autogen")
cloudpickle = pytest.importorskip("cloudpickle")

from engine import Workflow  # noqa: E402
from engine.integrations.ag2 import observe  # noqa: E402
from engine.integrations.scripted_llm import ScriptedLLM, reply, tool_call  # noqa: E402
from engine_support import DASK_TIMEOUT, check_log, of_type, wait_state, wait_until  # noqa: E402

# Steps run on Dask workers too: functions defined here travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PRICE = (0.001, 0.002)  # USD per 1,000 input / output tokens


def usd(usage) -> float:
    return usage[0] * PRICE[0] / 1000 + usage[1] * PRICE[1] / 1000


def config(llm: ScriptedLLM) -> dict:
    return {"config_list": llm.config_list(price=PRICE), "cache_seed": None}


def ends(message) -> bool:
    return "TERMINATE" in (message.get("content") or "")


def spectrum(lmax: int) -> list:
    """C_l of a toy model."""
    if lmax < 0:
        raise ValueError("lmax must be >= 0")
    return [ell * (ell + 1) for ell in range(lmax)]


def node_events(run, node_id: str, *types: str) -> list[dict]:
    return [e for e in of_type(check_log(run), *types) if e["data"].get("node_id") == node_id]


def two_agent_chat(base_url: str, human: str = "NEVER") -> tuple:
    """An engineer with a spectrum tool and a user proxy that runs it."""
    cfg = {"config_list": [{"model": "scripted-model", "base_url": base_url, "api_key": "k",
                            "price": list(PRICE)}], "cache_seed": None}
    engineer = autogen.AssistantAgent("engineer", llm_config=cfg)
    user = autogen.UserProxyAgent("user", human_input_mode=human, code_execution_config=False,
                                  is_termination_msg=ends, max_consecutive_auto_reply=5)
    autogen.register_function(spectrum, caller=engineer, executor=user, description="a toy spectrum")
    return user, engineer


TOOL_SCRIPT = [
    reply(tool_calls=[tool_call("spectrum", {"lmax": 4})], usage=(100, 10)),
    reply(tool_calls=[tool_call("spectrum", {"lmax": -1})], usage=(140, 11)),
    reply("The spectrum is [0, 2, 6, 12]. TERMINATE", usage=(180, 12)),
]


def test_a_two_agent_chat_with_tool_calls(store):
    wf = Workflow("two agents")

    @wf.step()
    def solve(ctx):
        with ScriptedLLM(TOOL_SCRIPT) as llm:
            user, engineer = two_agent_chat(llm.base_url)
            with observe(ctx):
                user.initiate_chat(engineer, message="Compute the spectrum up to l=4")
            return len(llm.requests)

    run = wf.start(store=store)
    assert run.wait(30) == "completed", run.snapshot()["nodes"][0]["error"]
    assert run.result("solve") == 3
    messages = [(e["data"]["agent"], e["data"]["recipient"], e["data"]["message"])
                for e in node_events(run, "solve", "agent_message")]
    assert messages == [("user", "engineer", "Compute the spectrum up to l=4"),
                        ("engineer", "user", "The spectrum is [0, 2, 6, 12]. TERMINATE")]
    calls = [e["data"] for e in node_events(run, "solve", "agent_tool_call")]
    assert [(c["agent"], c["tool"], c["arguments"]) for c in calls] == [
        ("engineer", "spectrum", {"lmax": 4}), ("engineer", "spectrum", {"lmax": -1})]
    assert calls[0]["result"] == "[0, 2, 6, 12]" and "error" not in calls[0]
    assert "lmax must be >= 0" in calls[1]["error"] and calls[1]["result"] is None
    costs = [e["data"] for e in node_events(run, "solve", "cost_update")]
    assert [(c["model"], c["input_tokens"], c["output_tokens"]) for c in costs] == [
        ("scripted-model", 100, 10), ("scripted-model", 140, 11), ("scripted-model", 180, 12)]
    expected = sum(usd(r["usage"]) for r in TOOL_SCRIPT)
    assert [c["usd"] for c in costs] == pytest.approx([usd(r["usage"]) for r in TOOL_SCRIPT])
    assert run.snapshot()["run"]["cost_usd"] == pytest.approx(expected)
    progress = [e["data"].get("message") for e in node_events(run, "solve", "step_progress")]
    assert progress == ["chat ended: Termination message condition on agent 'user' met"]


def group_script(served: list):
    """Speaker selection answered by name, the agents' replies in order; ``served``
    collects every usage given, to check the costs against."""
    speakers = iter(["engineer", "user", "reviewer"])
    replies = iter([
        reply("Here is the code:\n```python\nprint(sum(ell * (ell + 1) for ell in range(4)))\n```",
              usage=(200, 30)),
        reply("The sum 20 is right. TERMINATE", usage=(260, 9)),
    ])

    def answer(request: dict) -> dict:
        asked = json.dumps(request["messages"])
        rep = (reply(next(speakers), usage=(50, 1)) if "select the next role" in asked
               else next(replies))
        served.append(rep["usage"])
        return rep
    return answer


def test_a_group_chat_with_code_execution(store, tmp_path):
    wf = Workflow("group")
    served: list = []

    @wf.step()
    def team(ctx):
        from autogen.coding import LocalCommandLineCodeExecutor

        with ScriptedLLM(group_script(served)) as llm:
            engineer = autogen.AssistantAgent("engineer", llm_config=config(llm))
            reviewer = autogen.AssistantAgent("reviewer", llm_config=config(llm))
            user = autogen.UserProxyAgent(
                "user", human_input_mode="NEVER", is_termination_msg=ends,
                code_execution_config={"executor": LocalCommandLineCodeExecutor(work_dir=str(tmp_path))})
            chat = autogen.GroupChat([user, engineer, reviewer], messages=[], max_round=6,
                                     speaker_selection_method="auto")
            manager = autogen.GroupChatManager(chat, llm_config=config(llm), is_termination_msg=ends)
            with observe(ctx):
                result = user.initiate_chat(manager, message="Sum l(l+1) for l < 4, in Python")
            return result.cost

    run = wf.start(store=store)
    assert run.wait(60) == "completed", run.snapshot()["nodes"][0]["error"]
    messages = [(e["data"]["agent"], e["data"]["recipient"]) for e in node_events(run, "team", "agent_message")]
    # each message once, as its speaker sent it: the manager's silent rebroadcasts are not repeated
    assert messages == [("user", "chat_manager"), ("engineer", "chat_manager"), ("user", "chat_manager"),
                        ("reviewer", "chat_manager")]
    texts = [e["data"]["message"] for e in node_events(run, "team", "agent_message")]
    assert "exitcode: 0" in texts[2] and "20" in texts[2]
    [code] = [e["data"] for e in node_events(run, "team", "agent_tool_call")]
    assert (code["agent"], code["tool"], code["arguments"]["language"]) == ("user", "execute_code", "python")
    assert "print(sum(" in code["arguments"]["code"]
    assert code["result"]["exit_code"] == 0 and code["result"]["output"].strip() == "20"
    progress = [e["data"].get("message") for e in node_events(run, "team", "step_progress")]
    assert progress[:4] == ["speaker: user", "speaker: engineer", "speaker: user", "speaker: reviewer"]
    assert progress[-1].startswith("chat ended: ")
    # every completion is costed, the speaker selections' too (ChatResult.cost misses them)
    costs = [e["data"] for e in node_events(run, "team", "cost_update")]
    assert len(costs) == len(served) and len(served) > 2
    assert sum(c["usd"] for c in costs) == pytest.approx(sum(usd(u) for u in served))
    assert run.snapshot()["run"]["cost_usd"] == pytest.approx(sum(usd(u) for u in served))


HUMAN_SCRIPT = [
    reply("C_2 = 6. TERMINATE", usage=(90, 8)),
    reply("C_3 = 12. TERMINATE", usage=(120, 8)),
]


def test_human_input_is_asked_and_answered_from_python(store):
    wf = Workflow("human input")

    @wf.step()
    def solve(ctx):
        with ScriptedLLM(HUMAN_SCRIPT) as llm:
            user, engineer = two_agent_chat(llm.base_url, human="TERMINATE")
            with observe(ctx):
                user.initiate_chat(engineer, message="What is C_2?")
            return len(llm.requests)

    run = wf.start(store=store)
    wait_state(run, "waiting_approval", timeout=30)
    [question] = run.snapshot()["run"]["pending_approvals"]
    assert question["kind"] == "question" and "exit" in question["prompt"]
    run.answer("And C_3?")  # text: sent to the engineer as the human's message
    wait_until(lambda: len(of_type(run.events().dicts(), "question_asked")) == 2, 30, "the second question")
    run.answer("exit")  # AG2's way to end the chat
    assert run.wait(30) == "completed"
    assert run.result("solve") == 2
    messages = [(e["data"]["agent"], e["data"]["message"]) for e in node_events(run, "solve", "agent_message")]
    assert messages == [("user", "What is C_2?"), ("engineer", "C_2 = 6. TERMINATE"),
                        ("user", "And C_3?"), ("engineer", "C_3 = 12. TERMINATE")]
    answers = [e["data"]["answer"] for e in node_events(run, "solve", "question_answered")]
    assert answers == ["And C_3?", "exit"]


def test_concurrent_observed_steps_never_mix(store):
    wf = Workflow("concurrent")
    both = threading.Barrier(2, timeout=20)

    def make(name: str):
        script = [reply(f"{name} turn {i}", usage=(10 + i, 1)) for i in range(6)]

        def step(ctx):
            with ScriptedLLM(script) as llm:
                cfg = config(llm)
                a = autogen.ConversableAgent(f"{name}_a", llm_config=cfg, human_input_mode="NEVER")
                b = autogen.ConversableAgent(f"{name}_b", llm_config=cfg, human_input_mode="NEVER")
                both.wait()  # both conversations run at the same time
                with observe(ctx):
                    a.initiate_chat(b, message=f"{name} starts", max_turns=3)
        return step

    wf.step("left")(make("left"))
    wf.step("right")(make("right"))
    run = wf.start(store=store, max_workers=2)
    assert run.wait(60) == "completed"
    for name in ("left", "right"):
        agents = {e["data"]["agent"] for e in node_events(run, name, "agent_message")}
        texts = [e["data"]["message"] for e in node_events(run, name, "agent_message")]
        assert agents == {f"{name}_a", f"{name}_b"}
        assert texts == [f"{name} starts"] + [f"{name} turn {i}" for i in range(5)]
        costs = node_events(run, name, "cost_update")
        assert [c["data"]["input_tokens"] for c in costs] == [10 + i for i in range(5)]


def test_an_exception_in_the_conversation_fails_the_step(store):
    wf = Workflow("broken chat")

    @wf.step()
    def solve(ctx):
        with ScriptedLLM([reply("one reply only")]) as llm:
            a = autogen.ConversableAgent("a", llm_config=config(llm), human_input_mode="NEVER")
            b = autogen.ConversableAgent("b", llm_config=config(llm), human_input_mode="NEVER")
            with observe(ctx):
                a.initiate_chat(b, message="go", max_turns=3)

    run = wf.start(store=store)
    assert run.wait(30) == "failed"
    error = run.snapshot()["nodes"][0]["error"]
    assert error["type"] == "InternalServerError" and "script exhausted" in error["message"]
    assert [e["data"]["message"] for e in node_events(run, "solve", "agent_message")] == ["go", "one reply only"]


def test_a_users_iostream_and_runtime_logger_are_chained(store):
    from autogen import runtime_logging
    from autogen.io.base import IOStream
    from autogen.logger.base_logger import BaseLogger

    class Recorder(BaseLogger):
        def __init__(self):
            self.completions = 0

        def start(self):
            return "mine"

        def log_chat_completion(self, *args, **kwargs):
            self.completions += 1

        def log_new_agent(self, *a, **k): ...
        def log_event(self, *a, **k): ...
        def log_new_wrapper(self, *a, **k): ...
        def log_new_client(self, *a, **k): ...
        def log_function_use(self, *a, **k): ...
        def stop(self): ...
        def get_connection(self): ...

    class Stream:
        def __init__(self):
            self.sent = []

        def print(self, *objects, sep=" ", end="\n", flush=False):
            pass

        def send(self, message):
            self.sent.append(message)

        def input(self, prompt="", *, password=False):
            raise AssertionError("observe answers input through ctx.ask")

    wf = Workflow("chained")
    mine, stream = Recorder(), Stream()

    @wf.step()
    def solve(ctx):
        with ScriptedLLM([reply("hello", usage=(5, 1))]) as llm:
            a = autogen.ConversableAgent("a", llm_config=config(llm), human_input_mode="NEVER")
            b = autogen.ConversableAgent("b", llm_config=config(llm), human_input_mode="NEVER")
            with IOStream.set_default(stream), observe(ctx):
                a.initiate_chat(b, message="hi", max_turns=1)

    runtime_logging.start(logger=mine)
    try:
        run = wf.start(store=store)
        assert run.wait(30) == "completed"
    finally:
        runtime_logging.stop()
    assert runtime_logging.autogen_logger is mine  # put back as it was
    assert mine.completions == 1 and len(node_events(run, "solve", "cost_update")) == 1
    assert stream.sent  # the user's stream still received the chat's events


def test_an_observed_conversation_on_a_dask_worker(store, healthy):
    wf = Workflow("on dask")

    with ScriptedLLM(HUMAN_SCRIPT[:1]) as llm:
        base_url = llm.base_url

        @wf.step()
        def solve(ctx):
            user, engineer = two_agent_chat(base_url, human="TERMINATE")
            with observe(ctx):
                user.initiate_chat(engineer, message="What is C_2?")
            return "done"

        run = wf.start(store=store, dask=healthy)
        wait_state(run, "waiting_approval", timeout=DASK_TIMEOUT)
        run.answer("exit")
        assert run.wait(DASK_TIMEOUT) == "completed"
    messages = [(e["data"]["agent"], e["data"]["message"]) for e in node_events(run, "solve", "agent_message")]
    assert messages == [("user", "What is C_2?"), ("engineer", "C_2 = 6. TERMINATE")]
    [cost] = node_events(run, "solve", "cost_update")
    assert cost["data"]["usd"] == pytest.approx(usd(HUMAN_SCRIPT[0]["usage"]))


def test_an_async_chat_is_observed_too(store):
    import asyncio

    wf = Workflow("async chat")

    @wf.step()
    def solve(ctx):
        with ScriptedLLM([reply("pong", usage=(7, 1))]) as llm:
            a = autogen.ConversableAgent("a", llm_config=config(llm), human_input_mode="NEVER")
            b = autogen.ConversableAgent("b", llm_config=config(llm), human_input_mode="NEVER")
            with observe(ctx):
                asyncio.run(a.a_initiate_chat(b, message="ping", max_turns=1))

    run = wf.start(store=store)
    assert run.wait(30) == "completed", run.snapshot()["nodes"][0]["error"]
    assert [(e["data"]["agent"], e["data"]["message"]) for e in node_events(run, "solve", "agent_message")] == [
        ("a", "ping"), ("b", "pong")]
    [cost] = node_events(run, "solve", "cost_update")
    assert (cost["data"]["input_tokens"], cost["data"]["output_tokens"]) == (7, 1)
