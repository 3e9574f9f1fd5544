"""What ``observe(ctx)`` costs an AG2 conversation: µs per message of a 1,000-message
scripted chat observed, against the same chat not observed, in the same run.

Two ``ConversableAgent``s talk through the scripted endpoint (the real ``openai``
client, HTTP on 127.0.0.1) for ``--messages`` messages (``max_turns`` = half of it),
inside steps of one workflow run: ``plain`` chats without ``observe``, ``observed``
within it (every message an ``agent_message``, every completion a ``cost_update``,
a checkpoint per message). The steps alternate ``--repeat`` times (each its own node,
one after the other, so they never overlap); each chat is timed inside its step, from
``initiate_chat`` to its return, and the medians are compared. AG2's console output is
off on both sides (an IOStream that drops it), and each request carries only the last two
messages (AG2's ``MessageHistoryLimiter``; AG2 otherwise sends the whole history every
time, which makes a 1,000-message chat quadratic), so the figure is ``observe``'s own cost.

    python benchmarks/agents_overhead.py [--messages 1000] [--repeat 3]

Figures: the wall-time difference per message, and the step thread's CPU time
difference per message (observe's hooks and ctx calls run there).
"""

from __future__ import annotations

import statistics
import time

from _common import bench_dir, emit, note, open_store, parser, run_to_completion

import autogen
from autogen.agentchat.contrib.capabilities import transform_messages, transforms
from autogen.io.base import IOStream

from engine import Workflow
from engine.integrations.ag2 import observe
from engine.integrations.scripted_llm import ScriptedLLM, reply

TARGET_US = 500.0  # per message, against a model call that takes seconds in real use


class Quiet:
    def print(self, *objects, sep=" ", end="\n", flush=False):
        pass

    def send(self, message):
        pass

    def input(self, prompt="", *, password=False):
        return ""


def chat(llm: ScriptedLLM, messages: int) -> None:
    cfg = {"config_list": llm.config_list(price=(0.001, 0.002)), "cache_seed": None}
    a = autogen.ConversableAgent("a", llm_config=cfg, human_input_mode="NEVER", max_consecutive_auto_reply=messages)
    b = autogen.ConversableAgent("b", llm_config=cfg, human_input_mode="NEVER", max_consecutive_auto_reply=messages)
    for agent in (a, b):  # each request carries the last 2 messages, not the whole history
        transform_messages.TransformMessages(
            transforms=[transforms.MessageHistoryLimiter(max_messages=2)], verbose=False).add_to_agent(agent)
    a.initiate_chat(b, message="start", max_turns=messages // 2)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    times: dict[str, list[float]] = {"plain": [], "observed": []}
    cpu: dict[str, list[float]] = {"plain": [], "observed": []}
    counts: dict[str, int] = {}

    with ScriptedLLM(lambda request: reply("ok", usage=(20, 1))) as llm, bench_dir(args.dir) as d:
        wf = Workflow("bench-agents-overhead")
        previous = None
        for i in range(args.repeat):
            for kind in ("plain", "observed"):
                def step(ctx, kind=kind, **_):
                    with IOStream.set_default(Quiet()):
                        start, start_cpu = time.perf_counter(), time.thread_time()
                        if kind == "observed":
                            with observe(ctx):
                                chat(llm, args.messages)
                        else:
                            chat(llm, args.messages)
                        times[kind].append(time.perf_counter() - start)
                        cpu[kind].append(time.thread_time() - start_cpu)
                name = f"{kind}_{i}"
                wf.step(name, deps=[previous] if previous else [])(step)
                previous = name
        store = open_store("sqlite:///" + f"{d}/runs.sqlite".lstrip("/"))
        run = run_to_completion(wf, store)
        for e in run.events():
            if e.event_type == "agent_message":
                counts[e.data.node_id] = counts.get(e.data.node_id, 0) + 1
        store.close()

    observed = [n for k, n in counts.items() if k.startswith("observed")]
    note(f"messages recorded per observed chat: {observed}; chat seconds: {times}; step CPU s: {cpu}")
    plain, watched = statistics.median(times["plain"]), statistics.median(times["observed"])
    per_message_us = (watched - plain) / args.messages * 1e6
    emit(f"observe() overhead per message, {args.messages}-message scripted chat (wall)",
         per_message_us, "us/message",
         "the same chat not observed, same run (median of the chat's µs per message)",
         plain / args.messages * 1e6, f"≤ {TARGET_US:g} µs/message", per_message_us <= TARGET_US)
    # CPU time of the step's thread (where observe's hooks and ctx calls run): less
    # sensitive to a loaded machine than wall time; the journal's commits are not in it.
    plain_cpu, watched_cpu = statistics.median(cpu["plain"]), statistics.median(cpu["observed"])
    per_message_cpu = (watched_cpu - plain_cpu) / args.messages * 1e6
    emit(f"observe() overhead per message, {args.messages}-message scripted chat (step thread CPU)",
         per_message_cpu, "us/message", "the same chat not observed, same run (step thread CPU)",
         plain_cpu / args.messages * 1e6, f"≤ {TARGET_US:g} µs/message", per_message_cpu <= TARGET_US)


if __name__ == "__main__":
    main()
