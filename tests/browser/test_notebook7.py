"""Jupyter Notebook 7, end to end: a real ``jupyter notebook`` server and Chromium.

Notebook 7's shell is not JupyterLab's (no ``ILabShell``): the plugin must activate all
the same (no console error), the widget render and be controlled (pause, resume,
approve), the approval notification appear and go, and the runs panel open as a side
panel (palette command) with a run opening in the "down" area.
"""

from __future__ import annotations

import lab_helpers as h
from lab_helpers import shot, stores  # noqa: F401 (fixtures)

#: What a console error of ours would mention (Notebook 7 logs errors of its own).
OURS = ("cmbagent", "ILabShell", "No provider")


def open_notebook7(page, lab, notebook: str) -> None:
    page.goto(lab.url(f"notebooks/{notebook}"), timeout=h.PAGE_TIMEOUT_MS)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=h.PAGE_TIMEOUT_MS)

    def ready():
        k = h.kernel_of(lab, notebook)
        return k and k.get("connections", 0) >= 1 and k.get("execution_state") == "idle"
    h.wait_until(ready, h.KERNEL_TIMEOUT_S, f"the kernel of {notebook} to be up and idle", interval=0.25)


def test_notebook7_widget_controls_notifications_and_runs_panel(tmp_path, page, stores):
    root = tmp_path / "root"
    root.mkdir()
    lab = h.LabServer(root, tmp_path / "home", "sqlite:///" + str(tmp_path / "runs.sqlite").lstrip("/"),
                      app="notebook").start()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"{e}\n{e.stack}"))
    try:
        store = stores(lab)
        gate = h.new_gate(lab, "nb7")
        nb = h.write_notebook(lab, "nb7.ipynb", [f"""
            from e2e_flows import gated
            run = gated("nb7-pause", "{gate}").start()
            run
        """, """
            from e2e_flows import needs_approval
            asks = needs_approval("nb7-approve", prompt="Publish from Notebook 7?").start()
            asks
        """])
        open_notebook7(page, lab, nb)
        h.run_all(page)

        # The widget renders and its controls work while the kernel is idle or busy.
        view = h.wait_view(page, state="executing")
        run_id = h.view_run_id(view)
        h.wait_node(view, "long_step", "running")
        h.click_action(view, "pause")
        h.wait_state(store, run_id, "paused", timeout=20)
        h.wait_view(page, run_id, state="paused", timeout=20_000)
        h.click_action(view, "resume")
        h.wait_state(store, run_id, "executing", timeout=10)

        # The approval: a notification from the plugin, and Approve in the widget.
        page.locator("[data-cmbagent-run][data-state='waiting_approval']").first.wait_for(
            state="attached", timeout=h.PAGE_TIMEOUT_MS)
        asks_id = h.view_run_id(page.locator("[data-cmbagent-run][data-state='waiting_approval']").first)
        asks = h.run_view(page, asks_id)
        toast = h.approval_toasts(page, "nb7-approve").first
        toast.wait_for(state="visible", timeout=30_000)
        shot(page, "notebook7-approval")
        card = asks.locator("[data-approval-node='review']")
        h.click_action(card, "approve")
        h.wait_view(page, asks_id, state="completed")
        toast.wait_for(state="detached", timeout=30_000)

        # The runs panel: a side panel, opened from the palette; a run opens below.
        page.keyboard.press("Control+Shift+C")
        page.keyboard.type("Show the workflow runs")
        page.keyboard.press("Enter")
        panel = page.locator("#cmbagent-runs")
        panel.wait_for(state="visible", timeout=30_000)
        h.wait_row(page, run_id, "executing")
        h.wait_row(page, asks_id, "completed")
        h.sidebar_row(page, run_id).click()
        opened = h.wait_view(page, run_id, within=".cmbagent-run-panel", state="executing")
        h.wait_node(opened, "long_step", "running")
        shot(page, "notebook7-runs-panel")

        h.release(lab, gate)
        h.wait_view(page, run_id, state="completed")
        ours = [p for p in problems if any(word in p for word in OURS)]
        assert not ours, ours
    finally:
        h.release_all(lab)
        lab.stop()
