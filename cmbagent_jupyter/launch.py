"""Launch JupyterLab on the quickstart notebook (``./dev demo``).

    python -m cmbagent_jupyter.launch [extra jupyter lab arguments]

The notebooks are copied to ``demo/`` in the checkout (git-ignored) and JupyterLab
serves that copy, so running and saving them leaves the committed ``notebooks/``
untouched. A notebook is copied again only when the committed one is newer than the
copy (the reader's edits stay otherwise). The copy carries this Python's
``language_info``, the one its kernel reports: JupyterLab marks a notebook modified the
moment its kernel reports another one (the committed notebooks name only the language,
as their Python version is the reader's). JupyterLab's "get news?" pop-up is off for
this server (it would cover the widget): news are not fetched, and ``fetchNews`` is
``false`` in the settings overrides of its own ``app_settings_dir`` (in ``demo/``).

(The terminal demo workflow, no Jupyter, is ``python -m engine demo``.)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
WORKSPACE = ROOT / "demo"


def prepare_workspace(source: Path = NOTEBOOKS, workspace: Path = WORKSPACE) -> list[Path]:
    """Copy ``source``'s notebooks into ``workspace`` where missing or older; return those copied."""
    import nbformat
    from ipykernel.ipkernel import IPythonKernel  # the demo's kernel: this interpreter's ipykernel

    workspace.mkdir(parents=True, exist_ok=True)
    copied = []
    for notebook in sorted(source.glob("*.ipynb")):
        target = workspace / notebook.name
        if not target.exists() or target.stat().st_mtime < notebook.stat().st_mtime:
            nb = nbformat.read(notebook, as_version=4)
            nb.metadata["language_info"] = dict(IPythonKernel.language_info)
            nbformat.write(nb, target)
            shutil.copystat(notebook, target)  # "newer than the copy" compares these times
            copied.append(target)
    return copied


#: JupyterLab settings the demo's server starts with (a user's own settings still win).
SETTINGS_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}


def lab_args(workspace: Path = WORKSPACE) -> list[str]:
    """The ``jupyter lab`` command line of the demo (before the caller's own arguments);
    writes its settings overrides into ``workspace``."""
    app_settings = workspace / ".lab-settings"
    app_settings.mkdir(parents=True, exist_ok=True)
    (app_settings / "overrides.json").write_text(json.dumps(SETTINGS_OVERRIDES, indent=1))
    args = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={workspace}",
            "--LabApp.default_url=/lab/tree/quickstart.ipynb",  # the printed (and opened) URL
            # no "get news?" pop-up over the widget
            "--LabApp.news_url=None", f"--LabApp.app_settings_dir={app_settings}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")  # JupyterLab refuses to run as root otherwise
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        args.append("--no-browser")  # a headless machine: open the printed URL yourself
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not (NOTEBOOKS / "quickstart.ipynb").exists():
        print(f"cannot find {NOTEBOOKS / 'quickstart.ipynb'}: run the demo from a checkout of "
              "cmbagent-jupyter", file=sys.stderr)
        return 2
    for copied in prepare_workspace():
        print(f"copied {copied.name} to {WORKSPACE}/ (notebooks/ stays as committed)", file=sys.stderr)
    args = lab_args()
    os.execv(sys.executable, args + argv)
    return 0  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
