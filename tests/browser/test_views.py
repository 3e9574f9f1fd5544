"""The run view's tabs in a real JupyterLab: console, timeline, cost, files & plots and
metrics, live during a run, in the notebook widget and in the sidebar's main-area panel,
light and dark; a 2,000-step run's timeline; the quickstart's plot as a thumbnail.

Tabs are ``.cr-tab[data-tab=...]``; their panels ``.cr-tab-panel[data-tab=...]``. The
store is the truth the views are checked against. Screenshots go to
test-artifacts/browser/views-*.png.
"""

from __future__ import annotations

import lab_helpers as h
from lab_helpers import module_lab, shared_lab, shot, stores  # noqa: F401 (fixtures)

PANEL = ".cmbagent-run-panel"

#: A workflow that prints (with ANSI colours), logs, warns, reports costs and a metric
#: series, and saves a plot under the lab root; its ``watch`` step keeps printing until
#: the gate file exists.
VIEWS_FLOW = '''
import logging, time, warnings
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from engine import Workflow

def views_flow(name, gate):
    wf = Workflow(name, description="every tab of the run view")

    @wf.step()
    def fit(ctx):
        print("hello from the fit")
        print("\\x1b[31mred alert\\x1b[0m and \\x1b[1mbold\\x1b[0m")
        logging.getLogger("fitter").warning("chi2 above threshold")
        warnings.warn("an old prior")
        for i in range(12):
            ctx.metric("loss", 1.0 / (i + 1), step=i)
        ctx.cost(model="gpt-views", input_tokens=1200, output_tokens=300, usd=0.012, agent="engineer")
        ctx.cost(model="o-views", input_tokens=800, output_tokens=100, usd=0.034, agent="researcher")
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([1, 2, 3], [3, 1, 2])
        Path("outputs").mkdir(exist_ok=True)
        fig.savefig("outputs/views_plot.png")
        ctx.file("outputs/views_plot.png", description="the views plot")
        return 1

    @wf.step(deps=["fit"])
    def watch(ctx, fit):
        tick = 0
        while not Path(gate).exists():
            ctx.checkpoint()
            tick += 1
            print(f"watch tick {tick}")
            time.sleep(0.2)
        return tick

    return wf
'''

TABS = ("console", "timeline", "cost", "files", "metrics")


def _tab(view, tab: str):
    view.locator(f".cr-tab[data-tab='{tab}']").click()
    panel = view.locator(f".cr-tab-panel[data-tab='{tab}']")
    panel.wait_for(state="visible", timeout=30_000)
    return panel


def _check_tabs(page, view, where: str, theme: str) -> None:
    """Each tab shows what the run recorded, live; a screenshot of each."""
    console = _tab(view, "console")
    rows = console.locator(".cr-console-row")
    search = console.locator(".cr-console-search")
    # Only the rows in view are in the DOM (virtualised): the search finds older lines.
    for text in ("hello from the fit", "red alert", "chi2 above threshold", "an old prior"):
        search.fill(text)
        rows.filter(has_text=text).first.wait_for(timeout=60_000)
    search.fill("red alert")
    h.wait_until(lambda: rows.count() == 1, 10, "the search to leave one line")
    assert rows.first.locator(".cr-ansi-fg-1", has_text="red alert").count() == 1
    assert "\x1b" not in rows.first.inner_text() and "[31m" not in rows.first.inner_text()
    search.fill("chi2 above threshold")
    h.wait_until(lambda: rows.count() == 1, 10, "the search to leave one line")
    assert rows.first.get_attribute("data-level") == "warning"
    search.fill("")
    # live, following the end: new ticks keep arriving while the step runs
    def last_tick():
        return int(rows.filter(has_text="watch tick").last.inner_text().split()[-1])
    rows.filter(has_text="watch tick").last.wait_for(timeout=30_000)
    first = last_tick()
    h.wait_until(lambda: last_tick() > first + 2, 30, "more ticks in the console")
    shot(page, f"views-{where}-console-{theme}")

    timeline = _tab(view, "timeline")
    canvas = timeline.locator("canvas.cr-tl-canvas")
    canvas.wait_for(state="visible", timeout=10_000)
    box = timeline.locator(".cr-tl-viewport").bounding_box()
    page.mouse.move(box["x"] + 400, box["y"] + 24 + 22 * 0 + 11)  # the first row: fit
    tip = timeline.locator(".cr-tl-tip")
    tip.wait_for(state="visible", timeout=10_000)
    assert "attempt 1" in tip.inner_text()
    page.mouse.click(box["x"] + 60, box["y"] + 24 + 22 * 1 + 11)  # the second row: watch
    h.wait_until(lambda: view.locator(".cr-detail-name").inner_text() == "watch", 10,
                 "a click on the timeline to select the step")
    shot(page, f"views-{where}-timeline-{theme}")

    cost = _tab(view, "cost")
    for text in ("gpt-views", "o-views", "engineer", "researcher"):
        cost.locator("th", has_text=text).first.wait_for(timeout=30_000)
    assert cost.locator("svg.cr-chart").count() == 2
    shot(page, f"views-{where}-cost-{theme}")

    files = _tab(view, "files")
    img = files.locator("img.cr-thumb-img")
    img.wait_for(timeout=30_000)
    h.wait_until(lambda: img.evaluate("i => i.complete && i.naturalWidth > 0"), 30,
                 "the plot's thumbnail to load")
    assert "/files/outputs/views_plot.png" in files.locator("a.cr-thumb").get_attribute("href")
    shot(page, f"views-{where}-files-{theme}")

    metrics = _tab(view, "metrics")
    metrics.locator("figure.cr-metric", has_text="loss (12 points)").wait_for(timeout=30_000)
    assert metrics.locator("path.cr-chart-line").count() >= 1
    shot(page, f"views-{where}-metrics-{theme}")
    view.locator(".cr-tab[data-tab='graph']").click()


def test_each_view_live_in_the_widget_and_the_panel(shared_lab, page, stores):
    store = stores(shared_lab)
    (shared_lab.root / "views_flow.py").write_text(VIEWS_FLOW)
    gate = h.new_gate(shared_lab, "views")
    nb = h.write_notebook(shared_lab, "views.ipynb", [f"""
        from views_flow import views_flow
        from cmbagent_jupyter.widget import RunWidget
        run = views_flow("views-tour", "{gate}").start()
        RunWidget(run_id=run.id)
    """])
    h.open_notebook(page, shared_lab, nb)
    h.run_all(page)
    view = h.wait_view(page, connection="live")
    run_id = h.view_run_id(view)
    h.wait_node(view, "watch", "running")
    try:
        # keyboard: the tabs are one tab stop, arrows move between them
        view.locator(".cr-tab[data-tab='graph']").focus()
        page.keyboard.press("ArrowRight")
        assert view.locator(".cr-tab[data-tab='console']").get_attribute("aria-selected") == "true"
        h.scroll_to_top(view)
        _check_tabs(page, view, "widget", "light")
        try:
            h.set_theme(page, "JupyterLab Dark")
            h.scroll_to_top(view)
            _check_tabs(page, view, "widget", "dark")
            h.open_sidebar(page)
            h.wait_row(page, run_id, "executing").click()
            panel = h.wait_view(page, run_id, within=PANEL, state="executing")
            _check_tabs(page, panel, "panel", "dark")
        finally:
            h.set_theme(page, "JupyterLab Light")
        _check_tabs(page, panel, "panel", "light")
    finally:
        h.release(shared_lab, gate)
    h.wait_state(store, run_id, "completed")
    node = {n["id"]: n for n in store.run(run_id).snapshot()["nodes"]}["fit"]
    assert node["output_lines"] >= 4


def test_timeline_of_a_2000_step_run(shared_lab, page, stores):
    from engine import Workflow

    store = stores(shared_lab)
    wf = Workflow("timeline-2000", description="2,000 short steps in 20 layers")
    prev: list[str] = []
    for layer in range(20):
        cur = []
        for i in range(100):
            name = f"s{layer:02d}_{i:03d}"
            deps = [prev[i]] if prev else []
            wf.step(name, deps=deps, capture_output="off")(
                (lambda ctx, **_: None) if deps else (lambda ctx: None))
            cur.append(name)
        prev = cur
    run = wf.start(store=store, max_workers=16)
    assert run.wait(300) == "completed"

    h.open_lab(page, shared_lab)
    h.open_sidebar(page)
    h.wait_row(page, run.id, "completed").click()
    panel = h.wait_view(page, run.id, within=PANEL, state="completed")
    timeline = _tab(panel, "timeline")
    spacer = timeline.locator(".cr-tl-spacer")
    h.wait_until(lambda: spacer.evaluate("e => e.getBoundingClientRect().height") >= 24 + 2000 * 22, 60,
                 "a row per step (2,000)")
    shot(page, "views-timeline-2000-top")
    viewport = timeline.locator(".cr-tl-viewport")
    viewport.evaluate("e => { e.scrollTop = 22000; }")
    page.wait_for_timeout(200)  # one frame to draw
    box = viewport.bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 24 + 11)
    tip = timeline.locator(".cr-tl-tip")
    tip.wait_for(state="visible", timeout=10_000)
    assert tip.inner_text().startswith("s10_000")  # row 1,000: layer 10's first step
    shot(page, "views-timeline-2000-middle")


def test_quickstart_plot_shows_as_a_thumbnail_and_opens_in_a_tab(shared_lab, page, stores):
    store = stores(shared_lab)
    view, run_id = h.run_quickstart(page, shared_lab)
    h.wait_view(page, run_id, state="completed", timeout=240_000)
    files = _tab(view, "files")
    img = files.locator("img.cr-thumb-img")
    img.wait_for(timeout=30_000)
    h.wait_until(lambda: img.evaluate("i => i.complete && i.naturalWidth > 0"), 30, "the CAMB plot to load")
    recorded = [f for n in store.run(run_id).snapshot()["nodes"] for f in n["files"]]
    assert any(f["path"].endswith("quickstart_spectra.png") for f in recorded)
    h.scroll_to_top(view)
    shot(page, "views-quickstart-plot")
    files.locator("a.cr-thumb").first.click()
    # JupyterLab opens it in a main-area tab (its image viewer), not a browser tab
    page.get_by_role("tab", name="quickstart_spectra.png").wait_for(timeout=30_000)
    page.locator(".jp-ImageViewer img").wait_for(timeout=30_000)
    shot(page, "views-quickstart-plot-opened")
