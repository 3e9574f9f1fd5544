"""The release: ``python -m build`` gives a wheel and an sdist with the built front end
inside, and the wheel installs into a fresh venv with JupyterLab and no node: the server
extension and the lab extension are enabled and OK, and a real server serves both.

Slow (a build and a venv with JupyterLab, ~1–2 min): it runs under CI (``.ci/run``), or
with ``CMBAGENT_TEST_RELEASE=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

from support import free_port, under_ci, wait_until

ROOT = Path(__file__).resolve().parent.parent
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
LABEXT = "share/jupyter/labextensions/cmbagent-jupyter"

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(not (under_ci() or os.environ.get("CMBAGENT_TEST_RELEASE")),
                       reason="slow: runs under CI, or with CMBAGENT_TEST_RELEASE=1"),
]


def sh(*cmd, timeout: float = 600, **kw) -> str:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # without colours


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    sh(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> dict:
    """A fresh venv with the wheel and JupyterLab; ``env`` has no node on its PATH."""
    where = tmp_path_factory.mktemp("release")
    sh(sys.executable, "-m", "venv", where / "venv")
    bin_dir = where / "venv" / "bin"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("JUPYTER")}
    env.update(PATH=str(bin_dir), HOME=str(where / "home"),
               JUPYTER_CONFIG_DIR=str(where / "config"), JUPYTER_DATA_DIR=str(where / "data"),
               JUPYTER_RUNTIME_DIR=str(where / "runtime"),
               CMBAGENT_DB_URL="sqlite:///" + str(where / "runs.sqlite").lstrip("/"))
    assert shutil.which("node", path=env["PATH"]) is None and shutil.which("npm", path=env["PATH"]) is None
    [wheel] = dist.glob("*.whl")
    sh(bin_dir / "python", "-m", "pip", "install", "--quiet", wheel, "jupyterlab>=4", env=env, cwd=where)
    return {"bin": bin_dir, "env": env, "cwd": where}


def test_wheel_and_sdist_carry_the_built_front_end(dist):
    [wheel] = dist.glob(f"cmbagent_jupyter-{VERSION}-*.whl")
    [sdist] = dist.glob(f"cmbagent_jupyter-{VERSION}.tar.gz")
    with zipfile.ZipFile(wheel) as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
    data = f"cmbagent_jupyter-{VERSION}.data/data/"
    assert sizes["cmbagent_jupyter/static/widget.js"] > 10_000
    assert sizes["cmbagent_jupyter/static/widget.css"] > 0
    assert sizes[data + LABEXT + "/package.json"] > 0
    assert sizes[data + LABEXT + "/install.json"] > 0
    assert any(re.fullmatch(re.escape(data + LABEXT) + r"/static/remoteEntry\.\w+\.js", n) for n in sizes)
    assert sizes[data + "etc/jupyter/jupyter_server_config.d/cmbagent_jupyter.json"] > 0
    with tarfile.open(sdist) as t:
        names = set(t.getnames())
    top = f"cmbagent_jupyter-{VERSION}/"
    for name in ("cmbagent_jupyter/static/widget.js", "cmbagent_jupyter/labextension/package.json",
                 "labextension/src/index.ts", "pyproject.toml", "CHANGELOG.md"):
        assert top + name in names, name


def test_the_installed_wheel_is_enabled_and_ok_without_node(venv):
    run = dict(env=venv["env"], cwd=venv["cwd"])
    server = sh(venv["bin"] / "jupyter", "server", "extension", "list", **run)
    assert re.search(r"cmbagent_jupyter\s+enabled", server), server
    assert re.search(rf"cmbagent_jupyter {re.escape(VERSION)} OK", server), server
    lab = sh(venv["bin"] / "jupyter", "labextension", "list", **run)
    assert re.search(rf"cmbagent-jupyter v{re.escape(VERSION)}\s+enabled\s+OK", lab), lab
    # The widget loads its bundle from the installed package, not from this checkout.
    probe = ("import json, cmbagent_jupyter, cmbagent_jupyter.widget as w;"
             "print(json.dumps([cmbagent_jupyter.__file__, len(str(w.RunWidget._esm)), len(str(w.RunWidget._css))]))")
    where, esm, css = json.loads(sh(venv["bin"] / "python", "-c", probe, **run).splitlines()[-1])
    assert where.startswith(str(venv["bin"].parent)), where
    assert esm > 10_000 and css > 0


def test_a_server_from_the_wheel_serves_the_extension_and_its_front_end(venv):
    port, token = free_port(), "release-test"
    log = open(venv["cwd"] / "server.log", "wb")
    proc = subprocess.Popen([venv["bin"] / "jupyter", "lab", "--no-browser", "--allow-root",
                             f"--port={port}", "--ip=127.0.0.1", "--ServerApp.port_retries=0",
                             f"--IdentityProvider.token={token}"],
                            env=venv["env"], cwd=venv["cwd"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"

    def get(path: str) -> tuple[int, bytes]:
        req = urllib.request.Request(base + path, headers={"Authorization": f"token {token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    try:
        wait_until(lambda: proc.poll() is not None or get("api/status")[0] == 200, 90, "the server to answer")
        assert proc.poll() is None, (venv["cwd"] / "server.log").read_text()[-3000:]
        status, body = get("cmbagent/api/runs")
        assert status == 200 and isinstance(json.loads(body)["runs"], list), body[:500]
        # JupyterLab's page lists the federated extension, and its entry point is served.
        status, page = get("lab")
        assert status == 200
        config = json.loads(re.search(rb'id="jupyter-config-data"[^>]*>\s*(.*?)\s*</script>', page, re.S).group(1))
        [ext] = [e for e in config["federated_extensions"] if e["name"] == "cmbagent-jupyter"]
        status, entry = get(f"lab/extensions/cmbagent-jupyter/{ext['load']}")
        assert status == 200 and b"cmbagent-jupyter" in entry
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
