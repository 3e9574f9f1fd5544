"""Durable work in the browser: "Re-run from here" on a selected step of a completed run
(its kernel alive), the lost-run hint when the run's process is gone (wf.resume with a
copy button), and a run deleted from the sidebar leaving a second tab's list live."""

from __future__ import annotations

import lab_helpers as h
from lab_helpers import module_lab, shared_lab, shot, stores  # noqa: F401 (fixtures)

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
