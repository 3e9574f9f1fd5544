"""The notebook widget, end to end: a real JupyterLab, a real kernel, Chromium.

The DOM hooks are the contract: the root ``[data-cmbagent-run=ID]`` with ``data-state``
and ``data-connection``, nodes ``[data-node-id]`` with ``data-status``, control buttons
``button[data-action=...]`` and log entries ``[data-seq]``. The store is the truth the
view is checked against.
"""

from __future__ import annotations

import lab_helpers as h
from lab_helpers import module_lab, shared_lab, shot, stores  # noqa: F401 (fixtures)


#: "Within a few seconds": how long a click may take to reach the run's executor.
FEW_SECONDS = 10


def _assert_caught_up(view, store, run_id: str) -> None:
    """The view shows exactly the store's final picture, and its log no event twice."""
    final = store.run(run_id).state.value
    assert view.get_attribute("data-state") == final
    snapshot = store.run(run_id).snapshot()
    truth = {n["id"]: n["status"] for n in snapshot["nodes"]}
    assert h.node_statuses(view) == truth
    shown = h.seqs(view)
    h.assert_seqs_clean(shown)
    last = store.run(run_id).events()[-1]
    assert last.event_type == f"workflow_{final}"
    assert shown[-1] == last.seq, f"the log ends at #{shown[-1]}, the store at #{last.seq}"


def _widget_of(page, lab, run_id: str, notebook: str, **attrs: str):
    """``RunWidget(run_id=...)`` in a new notebook, run: its view, live, once the gated
    run's step is running and has said something."""
    nb = h.write_notebook(lab, notebook, [f"""
        from cmbagent_jupyter.widget import RunWidget
        RunWidget(run_id="{run_id}")
    """])
    h.open_notebook(page, lab, nb)
    h.run_all(page)
    view = h.wait_view(page, run_id, connection="live", **attrs)
    h.wait_node(view, "long_step", "running")
    view.locator("[data-seq][data-type='agent_message']").first.wait_for(state="attached",
                                                                          timeout=60_000)
    return view


def test_quickstart_runs_to_completed(shared_lab, page, stores):
    """quickstart.ipynb, Run All: the widget follows the run to completed, node by node."""
    store = stores(shared_lab)
    h.open_notebook(page, shared_lab, "quickstart.ipynb")
    h.run_all(page)
    view = h.wait_view(page)
    run_id = h.view_run_id(view)
    view.locator("[data-node-id][data-status='running']").first.wait_for(state="attached",
                                                                         timeout=120_000)
    h.scroll_to_top(view)
    shot(page, "widget-quickstart-running")

    # The notebook answers the reviewer's approval in code; then everything completes.
    h.wait_view(page, run_id, state="completed", timeout=240_000)
    statuses = h.wait_nodes(view, "completed")
    assert set(statuses) == {n["id"] for n in store.run(run_id).snapshot()["nodes"]}
    assert len(statuses) == 9
    assert view.get_attribute("data-connection") == "live"
    assert store.run(run_id).state == "completed"
    _assert_caught_up(view, store, run_id)
    # The approval was answered (in code): its notification must not linger.
    h.approval_toasts(page, "quickstart-H0-fit").first.wait_for(state="detached", timeout=30_000)
    h.scroll_to_top(view)
    shot(page, "widget-quickstart-completed")


def test_pause_and_resume_from_the_widget(shared_lab, page, stores):
    store = stores(shared_lab)
    gate = h.new_gate(shared_lab, "pause")
    nb = h.gated_notebook(shared_lab, "widget-pause.ipynb", "widget-pause", gate)
    h.open_notebook(page, shared_lab, nb)
    h.run_all(page)
    view = h.wait_view(page, state="executing")
    run_id = h.view_run_id(view)
    h.wait_node(view, "long_step", "running")
    shot(page, "widget-running")

    h.click_action(view, "pause")
    assert h.wait_state(store, run_id, "pausing", "paused", timeout=10)
    # long_step loops on ctx.checkpoint(): it parks there, and the run becomes paused.
    h.wait_state(store, run_id, "paused", timeout=20)
    h.wait_view(page, run_id, state="paused", timeout=20_000)
    h.wait_node(view, "long_step", "paused", timeout=20)
    assert h.node_status(store, run_id, "finish") == "pending"
    assert view.locator("button[data-action='pause']").is_disabled()
    shot(page, "widget-paused")

    h.click_action(view, "resume")
    h.wait_state(store, run_id, "executing", timeout=10)
    h.wait_node(view, "long_step", "running", timeout=20)
    h.release(shared_lab, gate)
    h.wait_view(page, run_id, state="completed")
    h.wait_nodes(view, "completed")
    assert store.run(run_id).state == "completed"
    moves = [e.data.new_state for e in store.run(run_id).events() if e.event_type.startswith("workflow_")]
    assert moves[-5:] == ["executing", "pausing", "paused", "executing", "completed"], moves
    _assert_caught_up(view, store, run_id)


def test_approve_from_the_widget(shared_lab, page, stores):
    """A step's ctx.approve() that the notebook does not answer: the widget's Approve does."""
    store = stores(shared_lab)
    nb = h.write_notebook(shared_lab, "widget-approve.ipynb", ["""
        from e2e_flows import needs_approval
        run = needs_approval("widget-approve", prompt="Publish the widget-test result?")
        run = run.start()
        run
    """])
    h.open_notebook(page, shared_lab, nb)
    h.run_all(page)
    view = h.wait_view(page, state="waiting_approval")
    run_id = h.view_run_id(view)
    h.wait_node(view, "review", "waiting_approval")
    card = view.locator("[data-approval-node='review']")
    card.wait_for(state="visible", timeout=30_000)
    assert "Publish the widget-test result?" in card.inner_text()
    shot(page, "widget-approval-prompt")

    # The sidebar plugin raised a notification for it too.
    h.approval_toasts(page, "widget-approve").first.wait_for(state="visible", timeout=30_000)

    h.click_action(card, "approve")
    h.wait_view(page, run_id, state="completed")
    h.wait_nodes(view, "completed")
    assert card.count() == 0, "the answered approval is still shown"
    # Answered here: the notification is withdrawn.
    h.approval_toasts(page, "widget-approve").first.wait_for(state="detached", timeout=30_000)
    received = [e.data for e in store.run(run_id).events() if e.event_type == "approval_received"]
    assert [(r.node_id, r.approved) for r in received] == [("review", True)]
    assert store.run(run_id).state == "completed"
    _assert_caught_up(view, store, run_id)


def test_reload_mid_run_reconnects_without_duplicates(shared_lab, page, stores):
    store = stores(shared_lab)
    gate = h.new_gate(shared_lab, "reload")
    nb = h.write_notebook(shared_lab, "widget-reload.ipynb", [f"""
        from e2e_flows import gated
        run = gated("widget-reload", "{gate}").start()
        run
    """])
    h.open_notebook(page, shared_lab, nb)
    h.run_all(page)
    view = h.wait_view(page, state="executing")
    run_id = h.view_run_id(view)
    view.locator("[data-seq][data-type='agent_message']").first.wait_for(state="attached",
                                                                          timeout=60_000)
    h.assert_seqs_clean(h.seqs(view))
    h.wait_kernel_idle(page)
    h.save(page)  # the output (the widget's view) is in the file: the reload shows it again

    page.reload()
    h.wait_lab_ready(page)
    view = h.wait_view(page, run_id, connection="live")
    at_reload = store.run(run_id).events()[-1].seq
    assert store.run(run_id).state == "executing"
    # Live after the reload: events newer than the reload arrive (the step ticks each second).
    page.wait_for_function(
        "([id, seq]) => [...document.querySelectorAll(`[data-cmbagent-run='${id}'] [data-seq]`)]"
        ".some(e => Number(e.dataset.seq) > seq)", arg=[run_id, at_reload], timeout=60_000)
    h.assert_seqs_clean(h.seqs(view))
    shot(page, "widget-reloaded-live")

    h.release(shared_lab, gate)
    h.wait_view(page, run_id, state="completed")
    h.wait_nodes(view, "completed")
    _assert_caught_up(view, store, run_id)


def test_second_tab_pauses_while_the_first_kernel_is_busy(shared_lab, page, stores):
    """Tab 1's kernel sleeps; tab 2 shows the same run and pauses it through the server."""
    store = stores(shared_lab)
    gate = h.new_gate(shared_lab, "tabs")
    nb = h.write_notebook(shared_lab, "widget-tab1.ipynb", [f"""
        from e2e_flows import gated
        run = gated("widget-two-tabs", "{gate}").start()
        run
    """])
    h.open_notebook(page, shared_lab, nb)
    h.run_all(page)
    view1 = h.wait_view(page, state="executing")
    run_id = h.view_run_id(view1)
    h.run_in_new_cell(page, """
        import time
        print("kernel busy", flush=True)
        time.sleep(30)
    """)
    h.wait_cell_output(page, "kernel busy")  # tab 1's kernel is now inside time.sleep(30)

    viewer = h.write_notebook(shared_lab, "widget-tab2.ipynb", [f"""
        from cmbagent_jupyter.widget import RunWidget
        RunWidget(run_id="{run_id}")
    """])
    tab2 = page.context.new_page()
    h.open_notebook(tab2, shared_lab, viewer)
    h.run_all(tab2)
    view2 = h.wait_view(tab2, run_id, state="executing", connection="live")
    h.wait_node(view2, "long_step", "running")

    busy_prompt = page.locator(f"{h.NOTEBOOK} .jp-CodeCell", has_text="time.sleep(30)").locator(
        ".jp-InputPrompt")
    assert "*" in busy_prompt.inner_text(), "tab 1's kernel is no longer busy: the test proves nothing"
    h.click_action(view2, "pause")
    h.wait_state(store, run_id, "pausing", "paused", timeout=FEW_SECONDS)
    h.wait_state(store, run_id, "paused", timeout=10)
    # Both tabs show it, tab 1 although its kernel is still busy (updates come over the socket).
    h.wait_view(tab2, run_id, state="paused", timeout=10_000)
    h.wait_view(page, run_id, state="paused", timeout=10_000)
    assert "*" in busy_prompt.inner_text()
    shot(tab2, "widget-tab2-paused")
    shot(page, "widget-tab1-paused-kernel-busy")

    # And tab 1's own button works while its kernel is busy.
    h.click_action(view1, "resume")
    h.wait_state(store, run_id, "executing", timeout=10)
    assert "*" in busy_prompt.inner_text()
    h.release(shared_lab, gate)
    h.wait_view(page, run_id, state="completed")
    h.wait_view(tab2, run_id, state="completed")
    _assert_caught_up(view1, store, run_id)
    _assert_caught_up(view2, store, run_id)


def test_server_restart_mid_run(lab, page, stores):
    """kill -9 the server while a run (in another process) goes on: reconnecting, then live,
    then the view catches up with what happened meanwhile."""
    store = stores(lab)
    gate = h.new_gate(lab, "restart")
    with h.process_run(lab, "widget-outside-server", gate) as run_id:
        view = _widget_of(page, lab, run_id, "widget-restart.ipynb")

        lab.kill()
        h.wait_view(page, run_id, connection="reconnecting", timeout=30_000)
        assert "reconnecting" in view.locator(".cr-conn").inner_text()
        h.release(lab, gate)  # the run finishes while no server is up
        h.wait_state(store, run_id, "completed", timeout=60)
        assert view.get_attribute("data-connection") == "reconnecting"
        assert view.get_attribute("data-state") == "executing"  # stale, and says so
        assert view.locator(".cr-stale").is_visible()
        view.scroll_into_view_if_needed()
        h.close_server_error_dialog(page)
        shot(page, "widget-server-down-reconnecting")

        lab.start()
        h.wait_view(page, run_id, connection="live", timeout=90_000)
        h.wait_view(page, run_id, state="completed", timeout=30_000)
        h.wait_nodes(view, "completed")
        _assert_caught_up(view, store, run_id)
        assert not view.locator(".cr-stale").is_visible()
        h.close_server_error_dialog(page)  # JupyterLab's own, from while the server was down
        shot(page, "widget-server-restarted-caught-up")


def test_comm_fallback_without_the_server_extension(tmp_path, page, stores):
    """No cmbagent server extension: the widget talks to its kernel over the comm."""
    lab = h.make_lab(tmp_path, ["--ServerApp.jpserver_extensions=cmbagent_jupyter=False"])
    try:
        # Really disabled: its API is not served, and the server never loaded it.
        assert h.api(lab, "cmbagent/api/schema")[0] == 404
        assert h.api(lab, "api/status")[0] == 200
        assert "cmbagent_jupyter | extension was successfully loaded" not in lab.log.read_text()

        store = stores(lab)
        gate = h.new_gate(lab, "comm")
        nb = h.write_notebook(lab, "widget-comm.ipynb", [f"""
            from e2e_flows import gated
            run = gated("widget-comm", "{gate}").start()
            run
        """])
        h.open_notebook(page, lab, nb)
        h.run_all(page)
        view = h.wait_view(page, connection="comm")
        run_id = h.view_run_id(view)
        h.wait_node(view, "long_step", "running")
        view.locator("[data-seq][data-type='agent_message']").first.wait_for(state="attached",
                                                                              timeout=60_000)
        # Without the server extension there is no sidebar (nothing to list runs from).
        assert page.locator("#cmbagent-runs").count() == 0
        shot(page, "widget-comm-mode")

        # Controls go through the kernel too (it is idle: the cell has finished).
        h.click_action(view, "pause")
        h.wait_state(store, run_id, "paused", timeout=30)
        h.wait_view(page, run_id, state="paused", timeout=30_000)
        h.click_action(view, "resume")
        h.wait_state(store, run_id, "executing", timeout=30)

        h.release(lab, gate)
        h.wait_view(page, run_id, state="completed", connection="comm")
        h.wait_nodes(view, "completed")
        _assert_caught_up(view, store, run_id)
    finally:
        lab.stop()


def test_a_hung_store_is_said_plainly_and_the_view_catches_up(tmp_path, page, stores, own_pg_cluster):
    """The lab's PostgreSQL stops answering (every process SIGSTOPped) while a run is shown:
    the view stays live and says the run store is not answering since when; once the
    database is back it says nothing more and catches up exactly."""
    lab = h.make_lab(tmp_path, ["--CmbAgentApp.store_unavailable_after=1",
                                "--CmbAgentApp.recheck_interval=1",
                                "--CmbAgentApp.reap_interval=3600"],
                     db_url=own_pg_cluster.create_database())
    try:
        store = stores(lab)
        gate = h.new_gate(lab, "stall")
        with h.process_run(lab, "widget-store-stall", gate) as run_id:
            view = _widget_of(page, lab, run_id, "widget-store.ipynb", store="available")
            sidebar = h.open_sidebar(page)
            with own_pg_cluster.frozen():
                h.wait_view(page, run_id, connection="live", store="unavailable", timeout=15_000)
                banner = view.locator(".cr-store")
                assert banner.is_visible()
                assert banner.inner_text().startswith("Run store not answering since ")
                assert "the view catches up by itself" in banner.inner_text()
                page.wait_for_selector("#cmbagent-runs[data-store='unavailable']", timeout=5_000)
                assert "the list catches up by itself" in sidebar.locator(".cmbagent-runs-store").inner_text()
                h.scroll_to_top(view)
                shot(page, "widget-store-unavailable")
            h.wait_view(page, run_id, connection="live", store="available", timeout=30_000)
            assert not view.locator(".cr-store").is_visible()
            assert not sidebar.locator(".cmbagent-runs-store").is_visible()
            h.release(lab, gate)
            h.wait_view(page, run_id, state="completed", timeout=60_000)
            h.wait_nodes(view, "completed")
            _assert_caught_up(view, store, run_id)
    finally:
        lab.stop()
