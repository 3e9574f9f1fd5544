"""Every ```python block of README.md and docs/*.md runs as shown (doctest-style).

A page's blocks run in order in one fresh interpreter, as a reader pastes them into one
session, with a fresh temporary default store. A block that needs something running
says so on its first line, ``# needs: ...``; the needs below are provided (a need not
listed here fails the test, so no block can be skipped by accident).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NEED = re.compile(r"\A# needs: (.*)\n")

DASK_ADDRESS = "tcp://scheduler:8786"
#: What each ``# needs:`` line may ask for: code run before the page's blocks, and the
#: text the blocks needing it have replaced (by the value of an expression of that code).
NEEDS = {
    f"a Dask scheduler at {DASK_ADDRESS}": (
        "import distributed\n"
        "_cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2,"
        " processes=True, dashboard_address=None)\n",
        {DASK_ADDRESS: "_cluster.scheduler_address"},
    ),
}


def blocks(page: Path) -> list[tuple[int, str, list[str]]]:
    """(first line number, code, needs) of each python block of a page."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        code = match.group(1)
        needs = NEED.findall(code)
        found.append((text.count("\n", 0, match.start(1)) + 1, code, needs))
    return found


def script(page: Path) -> str:
    """One program running a page's blocks in order, each compiled under the page's
    name and line numbers (so a traceback points at the README's own line)."""
    setup, calls = [], []
    for line, code, needs in blocks(page):
        for need in needs:
            if need not in NEEDS:
                pytest.fail(f"{page.name}:{line}: no way to provide `# needs: {need}` "
                            f"(known: {sorted(NEEDS)})")
            prelude = NEEDS[need][0]
            if prelude not in setup:
                setup.append(prelude)
        source = repr("\n" * (line - 1) + code)
        for need in needs:
            for old, expression in NEEDS[need][1].items():
                source += f".replace({old!r}, {expression})"
        calls.append(f"exec(compile({source}, {str(page.relative_to(ROOT))!r}, 'exec'), globals())")
    body = setup + calls + ["print('all blocks ran')"]
    # Under the main guard: Dask's worker processes import this program again.
    return "if __name__ == '__main__':\n" + "".join(
        f"    {line}\n" for chunk in body for line in chunk.splitlines())


def test_every_import_the_readme_names_inline_works():
    """``from x import y`` in the README's prose (e.g. RunWidget's import path) imports."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named = re.findall(r"`(from [\w.]+ import [\w, ]+)`", text)
    assert "from cmbagent_jupyter.widget import RunWidget" in named
    for statement in named:
        exec(statement, {})


def test_the_readme_has_python_blocks_and_the_headline_one_approves():
    readme = blocks(ROOT / "README.md")
    assert len(readme) >= 2
    assert "run.wait_for_approval()" in readme[0][1]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.name)
def test_every_python_block_runs_as_shown(page, tmp_path):
    program = tmp_path / "snippets.py"
    program.write_text(script(page), encoding="utf-8")
    env = {**os.environ, "CMBAGENT_DB_URL": "sqlite:///" + str(tmp_path / "runs.sqlite").lstrip("/"),
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0 and "all blocks ran" in out.stdout, (
        f"{page.name}'s python blocks failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
