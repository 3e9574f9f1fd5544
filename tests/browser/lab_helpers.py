"""Driving JupyterLab and the store from the browser tests: notebooks, kernels, runs.

Everything here waits on a condition with a timeout (never a fixed sleep). Runs are
made controllable by *gated* workflows (see ``FLOWS``): their long step loops on
``ctx.checkpoint()`` until the test creates a release file in the lab root, so a test
decides exactly when a run may finish, and pause/cancel always find a checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Optional

import nbformat
import pytest


def _browser_conftest():
    """tests/browser/conftest.py as a module (by path: several conftest.py files exist)."""
    path = Path(__file__).with_name("conftest.py")
    loaded = sys.modules.get("conftest")
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
        return loaded
    if str(path.parents[1]) not in sys.path:  # it imports tests/support.py
        sys.path.append(str(path.parents[1]))
    spec = importlib.util.spec_from_file_location("cmbagent_browser_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_conftest = _browser_conftest()
ROOT, LabServer, wait_until, shot = _conftest.ROOT, _conftest.LabServer, _conftest.wait_until, _conftest.shot

#: Generous: the CI box (and a loaded dev box) can be slow to start kernels and pages.
PAGE_TIMEOUT_MS = 120_000
KERNEL_TIMEOUT_S = 120
RUN_TIMEOUT_S = 120
#: The notebook panel on show in the main area.
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"

# --------------------------------------------------------------------------------------
# The workflows the tests run (written to the lab root as e2e_flows.py, imported by the
# notebooks' kernels and by the "separate Python process" runs).

FLOWS = '''
"""Workflows for the browser tests: long steps that loop on ctx.checkpoint()."""
import time
from pathlib import Path

from engine import Workflow


def wait_for_gate(ctx, gate, limit=600.0):
    """Loop on checkpoints (so pause/cancel act at once) until the file `gate` exists."""
    started = time.monotonic()
    ticks = 0
    while not Path(gate).exists():
        ctx.checkpoint()
        if time.monotonic() - started > limit:
            raise TimeoutError(f"nobody created {gate} within {limit} s")
        time.sleep(0.05)
        ticks += 1
        if ticks % 20 == 0:  # about once a second: something for the log to show
            ctx.progress(None, f"waiting for {gate} ({ticks // 20} s)")
            ctx.message(f"tick {ticks // 20}", agent="tester")
    ctx.checkpoint()


def count_run(counter, step):
    """Append `step` to the file `counter` (None: count nothing): how often a step ran,
    kept outside the store."""
    if counter:
        with open(counter, "a") as f:
            f.write(step + "\\n")


def gated(name, gate, description="a browser-test workflow with a long, gated step", counter=None):
    """prepare -> long_step (waits for `gate`) -> finish; each run of a step is counted in
    the file `counter` when given."""
    wf = Workflow(name, description=description)

    @wf.step()
    def prepare(ctx):
        count_run(counter, "prepare")
        ctx.message("prepared the inputs", agent="tester")
        ctx.cost(model="scripted-llm", input_tokens=100, output_tokens=20, usd=0.001)
        ctx.progress(1.0, "ready")
        return 1

    @wf.step(deps=["prepare"])
    def long_step(ctx, prepare):
        count_run(counter, "long_step")
        wait_for_gate(ctx, gate)
        return prepare + 1

    @wf.step(deps=["long_step"])
    def finish(ctx, long_step):
        count_run(counter, "finish")
        ctx.message(f"finished with {long_step + 1}", agent="tester")
        return long_step + 1

    return wf


def long_calls(name, gate):
    """Three parallel steps inside one long call each (no ctx.checkpoint until `gate`
    exists, like a CAMB run), then combine."""
    wf = Workflow(name, description="a browser-test workflow whose steps sit in long calls")

    def make(step):
        def call(ctx):
            ctx.progress(0.5, "inside one long call")
            while not Path(gate).exists():
                time.sleep(0.05)
            return step
        return call

    for step in ("camb_a", "camb_b", "camb_c"):
        wf.step(step)(make(step))

    @wf.step(deps=["camb_a", "camb_b", "camb_c"])
    def combine(ctx, camb_a, camb_b, camb_c):
        return [camb_a, camb_b, camb_c]

    return wf


def needs_approval(name, prompt="Ship the result?"):
    """compute -> review (asks a human: ctx.approve) -> publish."""
    wf = Workflow(name, description="a browser-test workflow that asks for approval")

    @wf.step()
    def compute(ctx):
        ctx.message("computed the answer: 42", agent="tester")
        return 42

    @wf.step(deps=["compute"])
    def review(ctx, compute):
        ok = ctx.approve(prompt)
        ctx.message("approved" if ok else "rejected", agent="reviewer")
        return ok

    @wf.step(deps=["review"])
    def publish(ctx, review):
        return "published" if review else "not published"

    return wf
'''

PROCESS_SCRIPT = '''
import sys
from e2e_flows import gated

run = gated(sys.argv[1], sys.argv[2], description="started by a separate Python process").start()
print(run.id, flush=True)
print("final", run.wait(timeout=900).value, flush=True)
'''


# --------------------------------------------------------------------------------------
# Servers

def make_lab(base: Path, extra_args: Iterable[str] = (), db_url: Optional[str] = None) -> LabServer:
    """Like the `lab` fixture (copy of notebooks/, fresh SQLite store unless ``db_url``
    names another), with extra args."""
    root = base / "root"
    shutil.copytree(ROOT / "notebooks", root,
                    ignore=shutil.ignore_patterns("outputs", ".ipynb_checkpoints"))
    db_url = db_url or "sqlite:///" + str(base / "runs.sqlite").lstrip("/")
    return LabServer(root, base / "home", db_url, extra_args=extra_args).start()


def api(lab: LabServer, path: str, method: str = "GET", timeout: float = 10) -> tuple[int, object]:
    """Call the server's REST API with the token; returns (status, parsed JSON or None)."""
    req = urllib.request.Request(lab.base + path, method=method,
                                 headers={"Authorization": f"token {lab.token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            return r.status, (json.loads(body) if body else None)
    except urllib.error.HTTPError as e:
        return e.code, None


def shutdown_kernels(lab: LabServer) -> None:
    """Delete every session (and its kernel): a shared lab starts each test clean."""
    try:
        status, sessions = api(lab, "api/sessions")
    except OSError:
        return
    for s in sessions or []:
        try:
            api(lab, f"api/sessions/{s['id']}", method="DELETE", timeout=30)
        except OSError:
            pass


# --------------------------------------------------------------------------------------
# Files in the lab root

def install_flows(lab: LabServer) -> None:
    (lab.root / "e2e_flows.py").write_text(FLOWS)


def write_notebook(lab: LabServer, name: str, cells: Iterable[str]) -> str:
    """A notebook of code cells in the lab root (with a kernelspec); returns its path."""
    install_flows(lab)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(c).strip()) for c in cells]
    nbformat.write(nb, lab.root / name)
    return name


def start_flow_in_notebook(page, lab: LabServer, notebook: str, flow: str, call: str,
                           state: str = "executing"):
    """A notebook whose one cell runs ``run = <call>.start()`` (``flow`` imported from
    e2e_flows) and displays ``run``, run in the page: its view once in ``state``, and the id."""
    nb = write_notebook(lab, notebook, [f"""
        from e2e_flows import {flow}
        run = {call}.start()
        run
    """])
    open_notebook(page, lab, nb)
    run_all(page)
    view = wait_view(page, state=state)
    return view, view_run_id(view)



def new_gate(lab: LabServer, prefix: str = "gate") -> str:
    """A fresh release-file name (relative to the lab root: the kernels' cwd)."""
    return f"release-{prefix}-{uuid.uuid4().hex[:8]}"


def release(lab: LabServer, gate: str) -> None:
    (lab.root / gate).touch()


def release_all(lab: LabServer) -> None:
    """Open every gate a test may have left closed (so no run keeps waiting)."""
    for nb in lab.root.glob("*.ipynb"):
        for gate in re.findall(r"release-[a-z0-9-]+", nb.read_text()):
            release(lab, gate)


# --------------------------------------------------------------------------------------
# Runs outside the server

@contextmanager
def process_run(lab: LabServer, name: str, gate: str):
    """A gated run started by a separate Python process on the lab's store: yields its id."""
    install_flows(lab)
    env = {**os.environ, "CMBAGENT_DB_URL": lab.db_url}
    proc = subprocess.Popen([sys.executable, "-c", PROCESS_SCRIPT, name, gate], cwd=lab.root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        run_id = proc.stdout.readline().strip()
        if not run_id:
            proc.wait(10)
            raise AssertionError(f"the run process printed no run id: {proc.stderr.read()[-2000:]}")
        yield run_id
    finally:
        release(lab, gate)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_state(store, run_id: str, *states: str, timeout: float = RUN_TIMEOUT_S) -> str:
    """Wait until the store says the run is in one of `states`; return it."""
    def check():
        s = store.run(run_id).state.value
        return s if s in states else None
    try:
        return wait_until(check, timeout, f"run {run_id} to be {'/'.join(states)} in the store")
    except AssertionError as e:
        raise AssertionError(f"{e} (it is {store.run(run_id).state.value})") from None


def node_status(store, run_id: str, node_id: str) -> str:
    return next(n["status"] for n in store.run(run_id).snapshot()["nodes"] if n["id"] == node_id)


# --------------------------------------------------------------------------------------
# JupyterLab pages

def lab_url(lab: LabServer, notebook: Optional[str] = None) -> str:
    """A URL in a workspace of its own (reset), so nothing a previous page opened reopens."""
    ws = f"e2e-{uuid.uuid4().hex[:8]}"
    path = f"lab/workspaces/{ws}" + (f"/tree/{notebook}" if notebook else "") + "?reset"
    return lab.url(path)


def accept_dialogs(page) -> None:
    """Keep the page drivable: accept beforeunload prompts (a reload must not wait on
    'leave page?'), and close JupyterLab's own "Server Connection Error" dialog (shown while
    a test has the server down) whenever it stands in the way of a click."""
    if getattr(page, "_e2e_dialogs", False):
        return
    page._e2e_dialogs = True
    page.on("dialog", lambda d: d.accept())
    page.add_locator_handler(page.locator(SERVER_ERROR_DIALOG_SEL), lambda d: close_server_error_dialog(page),
                             no_wait_after=True)


SERVER_ERROR_DIALOG_SEL = ".jp-Dialog:has-text('Server Connection Error')"


def close_server_error_dialog(page) -> None:
    """Close JupyterLab's "Server Connection Error" dialog if it is up (for good: the
    dialog offers "do not show again in this session")."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    dialog = page.locator(SERVER_ERROR_DIALOG_SEL)
    if not dialog.count():
        return
    try:
        box = dialog.locator("input[type='checkbox']")
        if box.count() and not box.first.is_checked():
            box.first.check(timeout=10_000)
        dialog.locator(".jp-Dialog-footer button").last.click(timeout=10_000)
    except PlaywrightTimeout:
        if dialog.count():
            raise
    dialog.wait_for(state="detached", timeout=10_000)


def open_lab(page, lab: LabServer) -> None:
    accept_dialogs(page)
    page.goto(lab_url(lab), timeout=PAGE_TIMEOUT_MS)
    wait_lab_ready(page, lab)


def wait_lab_ready(page, lab: Optional[LabServer] = None) -> None:
    """JupyterLab is up (and, where the server extension is on, so is our sidebar)."""
    page.wait_for_selector("#jp-main-dock-panel", timeout=PAGE_TIMEOUT_MS)
    if lab is None or not any("cmbagent_jupyter=False" in a for a in lab.extra_args):
        page.wait_for_selector("#cmbagent-runs", state="attached", timeout=PAGE_TIMEOUT_MS)


def kernel_of(lab: LabServer, notebook: str) -> Optional[dict]:
    status, sessions = api(lab, "api/sessions")
    for s in sessions or []:
        if s.get("path") == notebook and s.get("kernel"):
            return s["kernel"]
    return None


def dismiss_kernel_dialog(page) -> None:
    """A 'Select Kernel' dialog (a Run pressed before the kernel was attached): accept it."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and "Kernel" in (dialog.first.inner_text(timeout=2000) or ""):
        dialog.locator(".jp-mod-accept").first.click()


def wait_kernel_ready(page, lab: LabServer, notebook: str) -> None:
    """The notebook's kernel exists, this page is connected to it, and both say idle."""
    def ready():
        k = kernel_of(lab, notebook)
        return k and k.get("connections", 0) >= 1 and k.get("execution_state") == "idle"
    wait_until(ready, KERNEL_TIMEOUT_S, f"the kernel of {notebook} to be up and idle", interval=0.25)
    dismiss_kernel_dialog(page)
    page.wait_for_selector(f"{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=PAGE_TIMEOUT_MS)


def open_notebook(page, lab: LabServer, notebook: str) -> None:
    """Open a notebook in a fresh workspace and wait for its kernel."""
    accept_dialogs(page)
    page.goto(lab_url(lab, notebook), timeout=PAGE_TIMEOUT_MS)
    wait_lab_ready(page, lab)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=PAGE_TIMEOUT_MS)
    wait_kernel_ready(page, lab, notebook)


def run_all(page) -> None:
    """Run > Run All Cells, in the current notebook."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    dismiss_kernel_dialog(page)


def run_in_new_cell(page, code: str) -> None:
    """Append a cell to the current notebook, type `code` into it and run it (Shift+Enter)."""
    cells = page.locator(f"{NOTEBOOK} .jp-Cell")
    cells.last.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    n = cells.count()
    page.keyboard.press("b")  # command mode: new cell below, selected
    wait_until(lambda: cells.count() == n + 1, 10, "the new cell")
    page.keyboard.press("Enter")  # edit mode
    page.keyboard.insert_text(textwrap.dedent(code).strip())  # no auto-indent/auto-close
    page.keyboard.press("Shift+Enter")


def wait_cell_output(page, text: str, timeout: int = PAGE_TIMEOUT_MS) -> None:
    """Wait until an output area of the current notebook shows `text`."""
    page.locator(f"{NOTEBOOK} .jp-OutputArea-output", has_text=text).first.wait_for(
        state="attached", timeout=timeout)


def wait_kernel_idle(page, timeout: int = PAGE_TIMEOUT_MS) -> None:
    """The current notebook's kernel is idle (as this page sees it: no cell queued or running)."""
    page.wait_for_selector(f"{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=timeout)
    page.wait_for_function("() => !document.querySelector('" + NOTEBOOK + " .jp-InputPrompt')"
                           " || ![...document.querySelectorAll('" + NOTEBOOK + " .jp-InputPrompt')]"
                           ".some(p => p.textContent.includes('*'))", timeout=timeout)


def save(page) -> None:
    """File > Save (Ctrl+S), and wait for the 'unsaved' dot to go."""
    page.keyboard.press("Control+s")
    page.wait_for_selector(".jp-mod-current.jp-mod-dirty", state="detached", timeout=30_000)


# --------------------------------------------------------------------------------------
# The run view (notebook widget or sidebar panel): the DOM hook contract

def run_quickstart(page, lab: LabServer):
    """quickstart.ipynb, Run All: its widget's view (once shown) and its run's id."""
    open_notebook(page, lab, "quickstart.ipynb")
    run_all(page)
    view = wait_view(page)
    return view, view_run_id(view)


def run_view(page, run_id: Optional[str] = None, within: str = ""):
    sel = f"[data-cmbagent-run='{run_id}']" if run_id else "[data-cmbagent-run]"
    return page.locator(f"{within} {sel}".strip()).first


def wait_view(page, run_id: Optional[str] = None, within: str = "", timeout: int = PAGE_TIMEOUT_MS,
              **attrs: str):
    """Wait for a run view with the given data-* attributes (state=, connection=)."""
    sel = f"[data-cmbagent-run='{run_id}']" if run_id else "[data-cmbagent-run]"
    sel += "".join(f"[data-{k}='{v}']" for k, v in attrs.items())
    page.wait_for_selector(f"{within} {sel}".strip(), timeout=timeout)
    return run_view(page, run_id, within)


def view_run_id(view) -> str:
    return view.get_attribute("data-cmbagent-run")


def node_statuses(view) -> dict[str, str]:
    return view.locator("[data-node-id]").evaluate_all(
        "els => Object.fromEntries(els.map(e => [e.dataset.nodeId, e.dataset.status]))")


def wait_nodes(view, status: str, timeout: float = RUN_TIMEOUT_S) -> dict[str, str]:
    """Wait until the view shows every node with `status`; return {node id: status}."""
    def check():
        s = node_statuses(view)
        return s if s and all(v == status for v in s.values()) else None
    try:
        return wait_until(check, timeout, f"every node to be {status}", interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e} (the view shows {node_statuses(view)})") from None


def wait_node(view, node_id: str, status: str, timeout: float = RUN_TIMEOUT_S) -> None:
    view.locator(f"[data-node-id='{node_id}'][data-status='{status}']").wait_for(
        state="attached", timeout=timeout * 1000)


def seqs(view) -> list[int]:
    """Every log entry's data-seq, in DOM order."""
    return view.locator("[data-seq]").evaluate_all("els => els.map(e => Number(e.dataset.seq))")


def assert_seqs_clean(values: list[int]) -> None:
    assert values, "the log shows no events"
    assert len(values) == len(set(values)), f"duplicate data-seq in the log: {values}"
    assert values == sorted(values), f"data-seq not increasing in the log: {values}"


def scroll_to_top(view) -> None:
    """Scroll the notebook so that the view's header is at the top (for screenshots)."""
    view.evaluate("e => e.scrollIntoView({block: 'start'})")


def click_action(view, action: str, timeout: int = 30_000) -> None:
    """Click an enabled control button (pause|resume|cancel|approve|reject|retry) in a view."""
    button = view.locator(f"button[data-action='{action}']:not([disabled])").first
    button.wait_for(state="visible", timeout=timeout)
    button.click()


# --------------------------------------------------------------------------------------
# The sidebar and the theme

def open_sidebar(page):
    panel = page.locator("#cmbagent-runs")
    if not panel.is_visible():
        page.locator(".jp-SideBar .lm-TabBar-tab[data-id='cmbagent-runs']").click()
    panel.wait_for(state="visible", timeout=30_000)
    return panel


def sidebar_row(page, run_id: str, state: Optional[str] = None):
    sel = f"#cmbagent-runs [data-run-id='{run_id}']" + (f"[data-state='{state}']" if state else "")
    return page.locator(sel)


def wait_row(page, run_id: str, state: str, timeout: int = PAGE_TIMEOUT_MS):
    row = sidebar_row(page, run_id, state)
    row.wait_for(state="visible", timeout=timeout)
    return row


def approval_toasts(page, run_name: str):
    """JupyterLab notifications (toasts) asking for an approval in the run named `run_name`."""
    return page.locator(".Toastify__toast", has_text=f"{run_name} needs approval")


def notification_count(page) -> int:
    """The number on JupyterLab's notification bell (status bar)."""
    text = page.locator(".jp-Notification-Status").inner_text().strip()
    return int(text or 0)


def set_theme(page, name: str) -> None:
    """Settings > Theme > `name`, then wait for the page to wear it."""
    page.get_by_role("menuitem", name="Settings", exact=True).click()
    page.locator(".lm-Menu-item[data-type='submenu']", has_text=re.compile(r"^\s*Theme\s*$")).hover()
    page.locator(".lm-Menu-item", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).click()
    page.wait_for_selector(f"body[data-jp-theme-name='{name}']", state="attached", timeout=60_000)
    # JupyterLab shows its splash screen while it swaps the theme's CSS.
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=60_000)


# --------------------------------------------------------------------------------------
# Fixtures shared by the browser test modules (import them into a module to use them)

@pytest.fixture
def stores():
    """stores(lab) -> an open engine store on the lab's database (closed after the test)."""
    from engine import open_store

    opened = []

    def open_for(lab: LabServer):
        store = open_store(lab.db_url)
        opened.append(store)
        return store

    yield open_for
    for store in opened:
        store.close()


@pytest.fixture(scope="module")
def module_lab(tmp_path_factory):
    """One JupyterLab for the tests of a module that neither kill nor reconfigure it."""
    lab = make_lab(tmp_path_factory.mktemp("lab"))
    yield lab
    release_all(lab)
    lab.stop()


@pytest.fixture
def shared_lab(module_lab):
    """The module's lab, left clean for the next test: gates opened, kernels shut down."""
    yield module_lab
    release_all(module_lab)
    shutdown_kernels(module_lab)
