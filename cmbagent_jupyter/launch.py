"""Launch JupyterLab on the quickstart notebook (``./dev demo``).

    python -m cmbagent_jupyter.launch [extra jupyter lab arguments]

(The terminal demo workflow, no Jupyter, is ``python -m engine demo``.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    notebook = ROOT / "notebooks" / "quickstart.ipynb"
    if not notebook.exists():
        print(f"cannot find {notebook}: run the demo from a checkout of cmbagent-jupyter",
              file=sys.stderr)
        return 2
    # The printed (and opened) URL is the quickstart itself.
    args = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={ROOT / 'notebooks'}",
            "--LabApp.default_url=/lab/tree/quickstart.ipynb"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")  # JupyterLab refuses to run as root otherwise
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        args.append("--no-browser")  # a headless machine: open the printed URL yourself
    os.execv(sys.executable, args + argv)
    return 0  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
