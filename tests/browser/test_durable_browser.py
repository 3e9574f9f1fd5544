"""Durable work in the browser: "Re-run from here" on a selected step of a completed run
(its kernel alive), the lost-run hint when the run's process is gone (wf.resume with a
copy button), and a run deleted from the sidebar leaving a second tab's list live."""

from __future__ import annotations

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


def test_rerun_from_here_in_two_tabs_at_once_is_applied_once(shared_lab, page, stores):
    """The notebook's widget (tab 1) and the sidebar's run panel (tab 2), both on one
    completed run whose kernel is alive, click "Re-run from here" on the same step a few
    milliseconds apart: the run is re-run once (one completed -> executing, every step of
    the re-run executed once, counted outside the store) and both tabs show it completed."""
    store = stores(shared_lab)
    gate = h.new_gate(shared_lab, "two-tabs")
    counter = shared_lab.root / f"counts-{gate}.txt"
    h.release(shared_lab, gate)
    view, run_id = h.start_flow_in_notebook(
        page, shared_lab, "rerun-two-tabs.ipynb", "gated",
        f'gated("rerun-from-two-tabs", "{gate}", counter="{counter.name}")', state="completed")
    h.wait_nodes(view, "completed")

    second = page.context.new_page()
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
    # The re-run's long_step waits at its gate again, so both clicks land while it runs.
    (shared_lab.root / gate).unlink()
    for b in buttons:  # a DOM click each, milliseconds apart (no Playwright actionability waits)
        b.evaluate("b => b.click()")

    def answered():
        rows = raw_rows(store, f"SELECT status, error FROM commands WHERE run_id='{run_id}' AND action='rerun'")
        return rows if len(rows) == 2 and all(s != "pending" for s, _ in rows) else None

    commands = h.wait_until(answered, 60, "both tabs' re-run commands to be answered")
    assert sorted(s for s, _ in commands) == ["applied", "rejected"], commands
    assert "cannot re-run a node that is" in next(e for s, e in commands if s == "rejected")
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
