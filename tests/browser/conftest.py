"""A real `jupyter lab` (subprocess, with a token) and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from support import free_port, under_ci, wait_until  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("CMBAGENT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def pytest_collection_modifyitems(config, items):
    if os.path.exists(CHROMIUM):
        return
    if under_ci():  # where every test must run: no silent skip
        raise pytest.UsageError(f"browser tests need Chromium at {CHROMIUM} (CI installs it)")
    skip = pytest.mark.skip(reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` to run")
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(skip)


class LabServer:
    """JupyterLab in a subprocess; can be killed (-9) and started again on the same port."""

    def __init__(self, root: Path, home: Path, db_url: str, extra_args=(), quiet_news: bool = True,
                 app: str = "jupyterlab"):
        self.root, self.home, self.db_url = root, home, db_url
        self.app = app  # the module run: "jupyterlab", or "notebook" (Jupyter Notebook 7)
        self.quiet_news = quiet_news  # False: the server's own arguments must keep news away
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.log = home / "jupyter.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def url(self, path: str = "lab") -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}{sep}token={self.token}"

    def env(self) -> dict:
        # The quickstart waits its default minute for a click (the browser tests click).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("JUPYTER_TOKEN") and k != "QUICKSTART_ANSWER_AFTER_S"}
        env.update({
            "CMBAGENT_DB_URL": self.db_url,
            "JUPYTER_CONFIG_DIR": str(self.home / "config"),
            "JUPYTER_DATA_DIR": str(self.home / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
            "IPYTHONDIR": str(self.home / "ipython"),
            "MPLBACKEND": "Agg",
        })
        return env

    def start(self) -> "LabServer":
        settings = self.home / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        if self.quiet_news:  # no "would you like news?" toast over the page under test
            (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        # LabServerApp: the class of these settings in JupyterLab and in Notebook 7 alike.
        args = [sys.executable, "-m", self.app, "--no-browser", f"--port={self.port}",
                "--ServerApp.port_retries=0", "--ip=127.0.0.1",
                f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                f"--LabServerApp.user_settings_dir={self.home / 'settings'}",
                f"--LabServerApp.workspaces_dir={self.home / 'workspaces'}", *self.extra_args]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--allow-root")
        self.proc = subprocess.Popen(args, env=self.env(), stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._ready, 60, "jupyter lab to answer /api/status", interval=0.1)
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited ({self.proc.returncode}):\n"
                                 + self.log.read_text()[-3000:])
        try:
            req = urllib.request.Request(self.base + "api/status",
                                         headers={"Authorization": f"token {self.token}"})
            return urllib.request.urlopen(req, timeout=1).status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """kill -9 the server (and its kernels: the whole process group)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def lab(tmp_path):
    """A fresh JupyterLab on a copy of notebooks/ and a fresh SQLite store."""
    root = tmp_path / "root"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns("outputs", ".ipynb_checkpoints"))
    db_url = "sqlite:///" + str(tmp_path / "runs.sqlite").lstrip("/")
    server = LabServer(root, tmp_path / "home", db_url).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    # Module scope: Playwright's sync API keeps an asyncio loop running in this thread
    # while it lives, which later (pytest-jupyter) tests would otherwise pick up.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1440, "height": 960})
    pg = context.new_page()
    yield pg
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"))
    context.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def shot(page, name: str) -> Path:
    """Save a screenshot as a test artifact (and return its path)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


# tests/conftest.py loads pytest_jupyter, whose autouse fixtures get "the" asyncio loop and
# close it after each test. Under Playwright's sync API that loop is Playwright's own, still
# running: every browser test would end in "Cannot close a running event loop". These tests
# start their servers as subprocesses and need neither fixture.
@pytest.fixture
def jp_asyncio_loop():
    yield None


@pytest.fixture
def jp_server_cleanup():
    yield
