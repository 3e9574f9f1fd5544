"""``cmbagent-jupyter runs`` / ``watch`` with two real Jupyter servers running, each on
its own store: which one the CLI asks (the root containing the current directory, then
the newest), that it says so, what it says when the run is in the store but not on that
server, and that ``| head`` ends quietly."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import engine
from engine import Workflow
from fault_support import ServerProc
from support import shutdown_executors


def sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path).lstrip("/")


@pytest.fixture
def two_servers(tmp_path, token):
    """Server A on store A (one finished run), started first; server B on store B
    (empty), started later. Both announce themselves in one runtime dir."""
    url_a, url_b = sqlite_url(tmp_path / "a.sqlite"), sqlite_url(tmp_path / "b.sqlite")
    store_a = engine.open_store(url_a)
    wf = Workflow("short")
    wf.step("only")(lambda ctx: 1)
    run = wf.run(store_a, timeout=60)
    a = ServerProc(tmp_path, url_a, token, "a").start()
    b = ServerProc(tmp_path, url_b, token, "b").start()
    try:
        async def ready():
            await asyncio.gather(a.wait_ready(), b.wait_ready())
        asyncio.run(ready())
        runtime = tmp_path / "runtime"
        runtime.mkdir()
        now = time.time()
        for age, server in ((100, a), (10, b)):  # B is the newer one
            [info] = (server.jupyter_dir / "runtime").glob("jpserver-*.json")
            shutil.copy(info, runtime / info.name)
            os.utime(runtime / info.name, (now - age, now - age))
        yield {"a": a, "b": b, "run": run, "url_a": url_a, "store_a": store_a, "runtime": runtime}
    finally:
        for server in (a, b):
            server.stop()
        shutdown_executors(store_a)
        store_a.close()


def cli(servers: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in its own process, in ``cwd``, seeing both servers; its default store
    is store A."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(JUPYTER_RUNTIME_DIR=str(servers["runtime"]), CMBAGENT_DB_URL=servers["url_a"])
    return subprocess.run([sys.executable, "-m", "cmbagent_jupyter.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_server_whose_root_contains_the_cwd_is_asked_and_named(two_servers, tmp_path):
    a, b, run = two_servers["a"], two_servers["b"], two_servers["run"]
    inside_a = a.root / "analysis" / "deep"
    inside_a.mkdir(parents=True)
    out = cli(two_servers, inside_a, "runs")
    assert out.returncode == 0, out.stderr
    assert f"asking the Jupyter server at {a.url} (root {a.root}); 1 other server(s) running" in out.stderr
    assert run.id in out.stdout

    out = cli(two_servers, inside_a, "watch", run.id, "--plain")
    assert out.returncode == 0, out.stderr
    assert f"asking the Jupyter server at {a.url}" in out.stderr
    assert f"# run {run.id} completed" in out.stdout


def test_else_the_newest_server_and_what_the_store_has_that_it_does_not(two_servers, tmp_path):
    b, run = two_servers["b"], two_servers["run"]
    out = cli(two_servers, tmp_path, "runs")  # inside neither root: the newest, B
    assert out.returncode == 0, out.stderr
    assert f"asking the Jupyter server at {b.url} (root {b.root})" in out.stderr
    assert out.stdout.strip() == "no runs"
    assert (f"no runs on {b.url}; the store at {two_servers['url_a']} has 1 run(s): that server "
            "uses another store or serves another user") in out.stderr

    out = cli(two_servers, tmp_path, "watch", run.id)
    assert out.returncode == 2
    assert f"asking the Jupyter server at {b.url}" in out.stderr
    assert f"unknown run {run.id!r}; run {run.id} is in the store at {two_servers['url_a']}" in out.stderr
    assert "choose a server with --url" in out.stderr

    out = cli(two_servers, tmp_path, "watch", run.id, "--plain", "--url", two_servers["a"].url,
              "--token", two_servers["a"].token)
    assert out.returncode == 0, out.stderr
    assert f"asking {two_servers['a'].url}" in out.stderr


def test_piping_to_head_ends_without_a_traceback(two_servers, tmp_path):
    a = two_servers["a"]
    stop = threading.Event()
    wf = Workflow("chatty")

    @wf.step()
    def talk(ctx):
        i = 0
        while not stop.is_set():  # an event every few ms, until the pipeline has ended
            ctx.progress((i % 100) / 100, f"line {i}")
            i += 1
            time.sleep(0.002)

    run = wf.start(two_servers["store_a"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(JUPYTER_RUNTIME_DIR=str(two_servers["runtime"]))
    pipeline = (f"{sys.executable} -m cmbagent_jupyter.cli watch {run.id} --plain 2>err.txt | head -n 2;"
                " echo \"status ${PIPESTATUS[0]}\"")
    try:
        out = subprocess.run(["bash", "-c", pipeline], cwd=a.root, env=env, capture_output=True,
                             text=True, timeout=60)
    finally:
        stop.set()
    assert run.wait(30) == "completed"
    err = (a.root / "err.txt").read_text()
    assert len(out.stdout.splitlines()) == 3 and "status 141" in out.stdout, (out.stdout, err)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
