"""Committed notebooks open clean: no outputs, no execution counts, no saved widget
state or other per-session metadata (a reader's JupyterLab would show someone else's
stale runs, and mark the notebook modified). nbval runs them (``--nbval-lax``: every
cell must run; there are no outputs to compare)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACKED = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()


def test_there_are_committed_notebooks():
    assert "notebooks/quickstart.ipynb" in TRACKED


@pytest.mark.parametrize("path", TRACKED)
def test_a_committed_notebook_is_clean(path):
    nb = json.loads((ROOT / path).read_text(encoding="utf-8"))
    assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, nb["metadata"].keys()
    # Only the language: the kernel's full language_info (its Python version) is the reader's.
    assert nb["metadata"].get("language_info", {}) in ({}, {"name": "python"})
    for i, cell in enumerate(nb["cells"]):
        where = f"{path}, cell {i}"
        assert "id" in cell, f"{where}: no cell id (JupyterLab would add one: modified)"
        assert cell.get("metadata", {}) == {}, f"{where}: metadata {cell['metadata']}"
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{where}: has outputs"
            assert cell["execution_count"] is None, f"{where}: has an execution count"
        assert "NBVAL_" not in "".join(cell["source"]), f"{where}: an nbval marker (no outputs to check)"


def test_checkpoints_and_the_demo_copy_are_ignored():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".ipynb_checkpoints/" in ignored and "/demo/" in ignored
