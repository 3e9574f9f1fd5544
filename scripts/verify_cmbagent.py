"""Hand verification of engine.integrations.ag2 with CMBAgent's autogen fork:
``cmbagent.one_shot`` inside ``observe(ctx)``, offline, against the scripted endpoint
through ``OPENAI_BASE_URL``. Prints the step's agent events and the run's cost (compare
with CMBAgent's own cost table printed above them).

CMBAgent pins its own openai and autogen fork, so it needs a venv of its own::

    python3 -m venv /tmp/cmbagent-venv && /tmp/cmbagent-venv/bin/pip install cmbagent orjson networkx
    /tmp/cmbagent-venv/bin/pip install --no-deps -e .
    /tmp/cmbagent-venv/bin/python scripts/verify_cmbagent.py
"""
import json
import os
import tempfile
os.environ.setdefault("ANTHROPIC_API_KEY", "anything")
from engine import Workflow, open_store
from engine.integrations.ag2 import observe
from engine.integrations.scripted_llm import ScriptedLLM, reply, tool_call

def answer(req):
    msgs = req.get("messages", [])
    system = next((str(m.get("content")) for m in msgs if m.get("role") == "system"), "")
    # Each CMBAgent agent answered by its system message (or the tool it must call).
    if "You are the engineer agent" in system:
        return reply("Prints 2+2.\n```python\n# filename: codebase/add.py\nprint(2 + 2)\n```", usage=(300, 20))
    if "You are a formatting agent" in system:
        return reply(json.dumps({"filename": "add.py", "relative_path": "codebase", "code_explanation": "Prints 2+2.",
                                 "modification_summary": None, "python_code": "print(2 + 2)"}), usage=(400, 40))
    if any(t["function"]["name"] == "post_execution_transfer" for t in req.get("tools", [])):
        return reply(tool_calls=[tool_call("post_execution_transfer",
                                           {"next_agent_suggestion": "control", "execution_status": "success"})],
                     usage=(500, 15))
    return reply("TERMINATE", usage=(10, 1))

llm = ScriptedLLM(answer).start()
os.environ["OPENAI_BASE_URL"] = llm.base_url
os.environ["OPENAI_API_KEY"] = "scripted"
import cmbagent
import cmbagent.cmbagent as cm
_clear = cm.CMBAgent.clear_work_dir
def clear_keeping_chats(self):  # CMBAgent post30 clears work_dir, then writes to work_dir/chats
    _clear(self)
    os.makedirs(os.path.join(self.work_dir, "chats"), exist_ok=True)
cm.CMBAgent.clear_work_dir = clear_keeping_chats

work = tempfile.mkdtemp(prefix="cmbagent-verify-")
wf = Workflow("cmbagent one_shot")

@wf.step()
def solve(ctx):
    with observe(ctx):
        out = cmbagent.one_shot("Print 2+2 in Python", agent="engineer", work_dir=os.path.join(work, "out"), max_rounds=10)
    return len(out["chat_history"])

store = open_store("sqlite:///" + os.path.join(work, "runs.sqlite").lstrip("/"))
run = wf.start(store=store)
print("STATE", run.wait(120))
print("REQUESTS", len(llm.requests))
for e in run.events().dicts():
    if e["event_type"] in ("agent_message", "agent_tool_call", "cost_update", "step_progress", "step_failed"):
        d = {k: (v[:90] + "…" if isinstance(v, str) and len(v) > 90 else v) for k, v in e["data"].items() if k != "node_id"}
        print(e["event_type"], json.dumps(d, default=str)[:260])
snap = run.snapshot()["run"]
print("COST", snap["cost_usd"], snap["input_tokens"], snap["output_tokens"])
