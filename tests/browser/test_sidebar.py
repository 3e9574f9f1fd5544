"""The JupyterLab "Workflow runs" sidebar, end to end.

Rows ``#cmbagent-runs [data-run-id=ID]`` carry ``data-state``; opening one shows the
run's DAG in a main-area panel (``.cmbagent-run-panel [data-cmbagent-run=ID]``) with
the same controls as the notebook widget.
"""

from __future__ import annotations

import lab_helpers as h
from lab_helpers import module_lab, shared_lab, shot, stores  # noqa: F401 (fixtures)

PANEL = ".cmbagent-run-panel"


def test_lists_notebook_and_process_runs_opens_dags_and_controls_them(shared_lab, page, stores):
    store = stores(shared_lab)
    nb_gate = h.new_gate(shared_lab, "sidebar-nb")
    proc_gate = h.new_gate(shared_lab, "sidebar-proc")
    nb = h.write_notebook(shared_lab, "sidebar-runs.ipynb", [f"""
        from e2e_flows import gated
        run = gated("sidebar-from-notebook", "{nb_gate}").start()
        run
    """])
    with h.process_run(shared_lab, "sidebar-from-process", proc_gate) as proc_run:
        h.open_notebook(page, shared_lab, nb)
        h.run_all(page)
        nb_run = h.view_run_id(h.wait_view(page, state="executing"))
        h.open_sidebar(page)
        assert page.locator("#cmbagent-runs").get_attribute("data-connection") == "live"
        h.wait_row(page, nb_run, "executing")
        h.wait_row(page, proc_run, "executing")
        assert "sidebar-from-notebook" in h.sidebar_row(page, nb_run).inner_text()
        assert "sidebar-from-process" in h.sidebar_row(page, proc_run).inner_text()

        # Open the other process's run: its DAG, live, in the main area.
        h.sidebar_row(page, proc_run).click()
        panel = h.wait_view(page, proc_run, within=PANEL, state="executing")
        h.wait_node(panel, "long_step", "running")
        assert set(h.node_statuses(panel)) == {"prepare", "long_step", "finish"}

        h.click_action(panel, "pause")
        h.wait_state(store, proc_run, "pausing", "paused", timeout=10)
        h.wait_state(store, proc_run, "paused", timeout=20)
        h.wait_view(page, proc_run, within=PANEL, state="paused")
        h.wait_row(page, proc_run, "paused")
        shot(page, "sidebar-light")  # one run paused (its panel open), one executing
        try:
            h.set_theme(page, "JupyterLab Dark")
            h.wait_row(page, proc_run, "paused")
            shot(page, "sidebar-dark")
        finally:
            h.set_theme(page, "JupyterLab Light")  # the lab (and its settings) is shared
        h.click_action(panel, "resume")
        h.wait_state(store, proc_run, "executing", timeout=10)
        h.wait_row(page, proc_run, "executing")

        # The notebook's run opens the same way (and the notebook's widget stays as it was).
        h.sidebar_row(page, nb_run).click()
        nb_panel = h.wait_view(page, nb_run, within=PANEL, state="executing")
        h.wait_node(nb_panel, "long_step", "running")

        h.release(shared_lab, proc_gate)
        h.release(shared_lab, nb_gate)
        h.wait_row(page, proc_run, "completed")
        h.wait_row(page, nb_run, "completed")
        h.wait_view(page, nb_run, within=PANEL, state="completed")
        h.wait_nodes(nb_panel, "completed")
        assert store.run(proc_run).state == "completed"
        assert store.run(nb_run).state == "completed"

    shot(page, "sidebar-runs-completed")


def test_approval_notification_opens_the_run_and_approving_completes_it(shared_lab, page, stores):
    store = stores(shared_lab)
    prompt = "Publish the sidebar-test result?"
    # The notebook only prints the run id: the toast is the way to the run.
    nb = h.write_notebook(shared_lab, "sidebar-approval.ipynb", [f"""
        from e2e_flows import needs_approval
        run = needs_approval("sidebar-approval", prompt="{prompt}").start()
        print("run id:", run.id)
    """])
    h.open_notebook(page, shared_lab, nb)
    h.open_sidebar(page)
    h.run_all(page)
    toast = page.locator(".Toastify__toast", has_text=prompt)
    toast.wait_for(state="visible", timeout=60_000)
    run_id = next(r["id"] for r in store.runs() if r["name"] == "sidebar-approval")
    assert store.run(run_id).state == "waiting_approval"
    h.wait_row(page, run_id, "waiting_approval")
    assert "needs approval" in h.sidebar_row(page, run_id).inner_text()
    assert page.locator(f"{PANEL} [data-cmbagent-run='{run_id}']").count() == 0
    shot(page, "sidebar-approval-toast")

    assert h.notification_count(page) == 1
    toast.get_by_role("button", name="Open run").click()
    panel = h.wait_view(page, run_id, within=PANEL, state="waiting_approval")
    card = panel.locator("[data-approval-node='review']")
    card.wait_for(state="visible", timeout=30_000)
    assert prompt in card.inner_text()
    h.click_action(card, "approve")

    h.wait_view(page, run_id, within=PANEL, state="completed")
    h.wait_nodes(panel, "completed")
    h.wait_row(page, run_id, "completed")
    assert store.run(run_id).state == "completed"
    received = [e.data for e in store.run(run_id).events() if e.event_type == "approval_received"]
    assert [(r.node_id, r.approved) for r in received] == [("review", True)]
    # Answered: the notification is withdrawn (Open run closed the toast; the notification
    # itself stays in JupyterLab's notification center until the approval is answered).
    h.wait_until(lambda: h.notification_count(page) == 0, 30,
                 "the approval notification to be withdrawn from the notification center")
    toast.wait_for(state="detached", timeout=30_000)


def test_sidebar_survives_a_server_restart_and_catches_up(lab, page, stores):
    store = stores(lab)
    gate = h.new_gate(lab, "sidebar-restart")
    with h.process_run(lab, "sidebar-across-restart", gate) as run_id:
        h.open_lab(page, lab)
        sidebar = h.open_sidebar(page)
        h.wait_row(page, run_id, "executing")

        lab.kill()
        page.wait_for_selector("#cmbagent-runs[data-connection='reconnecting']", timeout=30_000)
        h.release(lab, gate)  # progresses to its end while the server is down
        h.wait_state(store, run_id, "completed", timeout=60)
        # ... and a run that starts and ends while the server is down.
        late_gate = h.new_gate(lab, "sidebar-late")
        h.release(lab, late_gate)
        with h.process_run(lab, "sidebar-while-down", late_gate) as late_run:
            h.wait_state(store, late_run, "completed", timeout=60)
        assert h.sidebar_row(page, run_id).get_attribute("data-state") == "executing"  # stale
        assert h.sidebar_row(page, late_run).count() == 0
        h.close_server_error_dialog(page)
        shot(page, "sidebar-server-down")

        lab.start()
        page.wait_for_selector("#cmbagent-runs[data-connection='live']", timeout=90_000)
        h.wait_row(page, run_id, "completed", timeout=30_000)
        h.wait_row(page, late_run, "completed", timeout=30_000)
        h.sidebar_row(page, run_id).click()
        panel = h.wait_view(page, run_id, within=PANEL, state="completed")
        h.wait_nodes(panel, "completed")
        assert sidebar.is_visible()
        h.close_server_error_dialog(page)  # JupyterLab's own, from while the server was down
        shot(page, "sidebar-after-restart")


def test_runs_of_the_same_name_are_told_apart(shared_lab, page, stores):
    """Runs of one workflow share a name: each row shows a short id and a start time to
    the second."""
    from engine import Workflow

    store = stores(shared_lab)
    wf = Workflow("same-name-twice")
    wf.step("only")(lambda ctx: 1)
    runs = [wf.run(store, timeout=30) for _ in range(2)]
    h.open_lab(page, shared_lab)
    h.open_sidebar(page)
    rows = [h.wait_row(page, r.id, "completed") for r in runs]
    texts = [row.inner_text() for row in rows]
    for run, text in zip(runs, texts):
        assert "same-name-twice" in text and run.id[:8] in text, text
    assert texts[0] != texts[1]
    for row in rows:  # "Dec 2, 10:44:07": the start time to the second
        start = row.locator(".cmbagent-run-start").inner_text()
        assert start.count(":") == 2, start
    shot(page, "sidebar-same-name")
