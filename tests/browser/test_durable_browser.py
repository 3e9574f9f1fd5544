"""Durable work in the browser: "Re-run from here" on a selected step of a completed run
(its kernel alive), the lost-run hint when the run's process is gone (wf.resume with a
copy button), and a run deleted from the sidebar leaving a second tab's list live."""

from __future__ import annotations

import json
import time

import lab_helpers as h
from lab_helpers import module_lab, shared_lab, shot, stores  # noqa: F401 (fixtures)
from support import raw_rows

PANEL = ".cmbagent-run-panel"


def step_starts(store, run_id: str, node_id: str) -> int:
    return sum(1 for e in store.run(run_id).events()
               if e.event_type == "step_started" and e.data.node_id == node_id)


def test_rerun_from_here_in_the_widget_of_a_completed_run(shared_lab, page, stores):
    store = stores(shared_lab)
    gate = h.new_gate(shared_lab, "rerun-nb")
    h.release(shared_lab, gate)  # the run completes at once; its kernel stays
    view, run_id = h.start_flow_in_notebook(page, shared_lab, "rerun-from-here.ipynb", "gated",
                                            f'gated("rerun-from-notebook", "{gate}")', state="completed")
    h.wait_nodes(view, "completed")
    view.locator("[data-node-id='long_step']").first.click()
    button = view.locator("button[data-action='rerun']:not([disabled])")
    button.wait_for(state="visible", timeout=30_000)
    assert "Re-run from here" in button.inner_text()
    h.scroll_to_top(view)
    shot(page, "rerun-from-here")
    button.click()
    h.wait_until(lambda: step_starts(store, run_id, "finish") == 2 and store.run(run_id).state == "completed",
                 60, "the re-run of long_step and finish")
    assert step_starts(store, run_id, "prepare") == 1  # upstream: not run again
    assert step_starts(store, run_id, "long_step") == 2
    h.wait_view(page, run_id, state="completed")
    shot(page, "rerun-from-here-done")


def test_a_run_whose_process_is_gone_says_how_to_resume_and_can_be_deleted_live(shared_lab, page, stores):
    store = stores(shared_lab)
    gate = h.new_gate(shared_lab, "lost-run")
    h.release(shared_lab, gate)
    with h.process_run(shared_lab, "finished-elsewhere", gate) as run_id:
        h.wait_state(store, run_id, "completed", timeout=60)
    # The process has exited: its completed run cannot be re-run from here.
    h.open_lab(page, shared_lab)
    h.open_sidebar(page)
    h.wait_row(page, run_id, "completed").click()
    panel = h.wait_view(page, run_id, within=PANEL, state="completed")
    panel.locator("[data-node-id='long_step']").first.click()
    h.click_action(panel, "rerun")
    hint = panel.locator("[data-hint='resume']").first
    hint.wait_for(state="visible", timeout=30_000)
    assert f'wf.resume("{run_id}", rerun=["long_step"])' in hint.inner_text()
    assert "select one" in panel.locator(".cr-banner").first.inner_text()  # the run's alert points there
    shot(page, "lost-run-hint")
    assert step_starts(store, run_id, "long_step") == 1

    # A second tab follows the run list; the run is deleted from the first one.
    second = page.context.new_page()
    h.open_lab(second, shared_lab)
    h.open_sidebar(second)
    h.wait_row(second, run_id, "completed")
    h.sidebar_row(page, run_id).locator("button[data-action='delete']").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(state="visible", timeout=30_000)
    shot(page, "delete-run-confirmation")
    dialog.get_by_role("button", name="Delete").click()
    h.sidebar_row(second, run_id).wait_for(state="detached", timeout=30_000)
    h.sidebar_row(page, run_id).wait_for(state="detached", timeout=30_000)
    assert run_id not in {r["id"] for r in store.runs()}
    shot(second, "deleted-run-second-tab")
    second.close()


def rerun_frames(page) -> dict[str, list]:
    """The rerun commands the page sends on its cmbagent socket(s) and the acks it gets
    (listen before the page opens its socket)."""
    frames: dict[str, list] = {"sent": [], "acks": []}

    def on_socket(ws):
        if "cmbagent/api/ws" not in ws.url:
            return
        ws.on("framesent", lambda payload: sent(json.loads(payload)))
        ws.on("framereceived", lambda payload: received(json.loads(payload)))

    def sent(msg):
        if msg.get("type") == "command" and msg.get("action") == "rerun":
            frames["sent"].append(msg)

    def received(msg):
        if msg.get("type") == "ack":
            frames["acks"].append(msg)

    page.on("websocket", on_socket)
    return frames


def test_rerun_from_here_in_two_tabs_at_once_is_applied_once(shared_lab, page, stores):
    """The notebook's widget (tab 1) and the sidebar's run panel (tab 2), both on one
    completed run whose kernel is alive, click "Re-run from here" on the same step at the
    same moment: the run is re-run once (one completed -> executing, every step of the
    re-run executed once, counted outside the store) and both tabs show it completed."""
    store = stores(shared_lab)
    gate = h.new_gate(shared_lab, "two-tabs")
    counter = shared_lab.root / f"counts-{gate}.txt"
    h.release(shared_lab, gate)
    tabs = [page, page.context.new_page()]
    frames = [rerun_frames(tab) for tab in tabs]
    view, run_id = h.start_flow_in_notebook(
        page, shared_lab, "rerun-two-tabs.ipynb", "gated",
        f'gated("rerun-from-two-tabs", "{gate}", counter="{counter.name}")', state="completed")
    h.wait_nodes(view, "completed")

    second = tabs[1]
    h.open_lab(second, shared_lab)
    h.open_sidebar(second)
    h.wait_row(second, run_id, "completed").click()
    panel = h.wait_view(second, run_id, within=PANEL, state="completed")
    h.wait_nodes(panel, "completed")
    buttons = []
    for v in (view, panel):
        v.locator("[data-node-id='long_step']").first.click()
        b = v.locator("button[data-action='rerun']:not([disabled])").first
        b.wait_for(state="visible", timeout=30_000)
        buttons.append(b)
    # The re-run's long_step waits at its gate again, so the run is still executing when
    # both tabs have their answers.
    (shared_lab.root / gate).unlink()
    at = time.time() * 1000 + 500  # both tabs click at this moment (one clock: one machine)
    for b in buttons:
        b.evaluate("(b, at) => setTimeout(() => b.click(), at - Date.now())", at)

    def answered(tab, f):
        tab.evaluate("0")  # Playwright's sync API hands over the socket frames during its calls
        ids = [m["command_id"] for m in f["sent"]]
        acks = [a for a in f["acks"] if a["command_id"] in ids]
        return acks if len(ids) == 1 and acks else None

    acks = [h.wait_until(lambda: answered(tab, f), 30, "the tab's re-run command and its ack")[0]
            for tab, f in zip(tabs, frames)]
    h.wait_until(lambda: not raw_rows(store, f"SELECT 1 FROM commands WHERE run_id='{run_id}' AND status='pending'"),
                 30, "every command to be answered by the run's kernel")
    stored = dict(raw_rows(store, f"SELECT command_id, status FROM commands WHERE run_id='{run_id}' AND action='rerun'"))
    # Applied once: one tab's command; the other tab's was refused (by the server, or by
    # the run's kernel once the first had put the step back to work).
    applied = [a for a in acks if stored.get(a["command_id"]) == "applied"]
    assert len(applied) == 1 and applied[0]["ok"] is True, (acks, stored)
    [other] = [a for a in acks if a is not applied[0]]
    assert other["ok"] is False or stored.get(other["command_id"]) == "rejected", (acks, stored)
    h.wait_node(view, "long_step", "running")
    h.wait_node(panel, "long_step", "running")
    h.scroll_to_top(view)
    shot(page, "rerun-two-tabs-notebook-running")
    shot(second, "rerun-two-tabs-sidebar-running")
    h.release(shared_lab, gate)

    h.wait_state(store, run_id, "completed")
    for v in (view, panel):
        h.wait_view(v.page, run_id, state="completed")
        assert set(h.wait_nodes(v, "completed")) == {"prepare", "long_step", "finish"}
    events = store.run(run_id).events()
    reopened = [e for e in events if e.event_type == "workflow_state_changed"
                and (e.data.old_state, e.data.new_state) == ("completed", "executing")]
    assert len(reopened) == 1, [(e.seq, e.event_type) for e in events]
    assert [e.event_type for e in events].count("workflow_completed") == 2
    assert step_starts(store, run_id, "long_step") == step_starts(store, run_id, "finish") == 2
    assert step_starts(store, run_id, "prepare") == 1
    ran = counter.read_text().split()
    assert {s: ran.count(s) for s in set(ran)} == {"prepare": 1, "long_step": 2, "finish": 2}
    h.scroll_to_top(view)
    shot(page, "rerun-two-tabs-notebook-done")
    shot(second, "rerun-two-tabs-sidebar-done")
    second.close()
