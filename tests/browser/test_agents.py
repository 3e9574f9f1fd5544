"""An observed AG2 conversation in the notebook widget: its messages (agent text as text
and code blocks, never HTML), its tool call and cost, and the agent's request for human
input answered in the widget's question card, with the keyboard."""

from __future__ import annotations

import pytest

import lab_helpers as h
from lab_helpers import module_lab, shared_lab, shot, stores  # noqa: F401 (fixtures)

pytest.importorskip("autogen")

CELL = """
import autogen
from engine import Workflow
from engine.integrations.ag2 import observe
from engine.integrations.scripted_llm import ScriptedLLM, reply, tool_call

llm = ScriptedLLM([
    reply(tool_calls=[tool_call("spectrum", {"lmax": 4})], usage=(120, 14)),
    reply("The spectrum is <b>not bold</b>:\\n```python\\nprint([0, 2, 6, 12])\\n```\\nTERMINATE",
          usage=(180, 30)),
]).start()

def spectrum(lmax: int) -> list:
    return [ell * (ell + 1) for ell in range(lmax)]

wf = Workflow("agents-in-the-widget")

@wf.step()
def solve(ctx):
    cfg = {"config_list": llm.config_list(price=(0.001, 0.002)), "cache_seed": None}
    engineer = autogen.AssistantAgent("engineer", llm_config=cfg)
    user = autogen.UserProxyAgent("user", human_input_mode="TERMINATE", code_execution_config=False,
                                  is_termination_msg=lambda m: "TERMINATE" in (m.get("content") or ""))
    autogen.register_function(spectrum, caller=engineer, executor=user, description="a toy spectrum")
    with observe(ctx):
        user.initiate_chat(engineer, message="Compute the spectrum up to l=4")

run = wf.start()
run
"""


def test_a_conversation_shown_live_and_its_question_answered_in_the_widget(shared_lab, page, stores):
    store = stores(shared_lab)
    nb = h.write_notebook(shared_lab, "widget-agents.ipynb", [CELL])
    h.open_notebook(page, shared_lab, nb)
    h.run_all(page)
    view = h.wait_view(page, state="waiting_approval")
    run_id = h.view_run_id(view)
    card = view.locator("[data-kind='question'][data-approval-node='solve']")
    card.wait_for(state="visible", timeout=60_000)
    assert "exit" in card.inner_text()  # AG2's own prompt, as text

    # The conversation so far, in the activity log: the code block is a code block, and
    # the agent's markup shows as the characters it wrote.
    code = view.locator(".cr-log-row[data-type='agent_message'] pre.cr-code[data-lang='python']")
    code.first.wait_for(state="visible", timeout=30_000)
    assert code.first.inner_text().strip() == "print([0, 2, 6, 12])"
    assert view.locator(".cr-log-row b").count() == 0
    assert "<b>not bold</b>" in view.locator(".cr-log-row[data-type='agent_message']").last.inner_text()
    assert "called spectrum(lmax=4)" in view.locator(".cr-log-row[data-type='agent_tool_call']").inner_text()
    h.scroll_to_top(view)
    shot(page, "agents-question-in-the-widget")
    try:
        h.set_theme(page, "JupyterLab Dark")
        card.wait_for(state="visible", timeout=30_000)
        h.scroll_to_top(view)
        shot(page, "agents-question-in-the-widget-dark")
    finally:
        h.set_theme(page, "JupyterLab Light")  # the lab (and its settings) is shared

    # Answer with the keyboard: focus the text box, type, Enter.
    box = card.get_by_role("textbox")
    box.focus()
    page.keyboard.type("exit")
    page.keyboard.press("Enter")
    h.wait_view(page, run_id, state="completed")
    assert card.count() == 0, "the answered question is still shown"
    run = store.run(run_id)
    answered = [e.data for e in run.events() if e.event_type == "question_answered"]
    assert [a.answer for a in answered] == ["exit"]
    snap = run.snapshot()["run"]
    assert snap["cost_usd"] == pytest.approx((120 * 0.001 + 14 * 0.002 + 180 * 0.001 + 30 * 0.002) / 1000)
    assert view.locator(".cr-stat-value").nth(1).inner_text().startswith("$0.000")
    h.scroll_to_top(view)
    shot(page, "agents-answered-in-the-widget")
