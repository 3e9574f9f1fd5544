"""Under CI every test runs: what would skip a test (no Chromium, no node, no
PostgreSQL) fails it instead, however the CI service spells ``CI``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import under_ci

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), ("True", True), ("TRUE", True), ("yes", True), ("Yes", True),
    ("on", True), ("ON", True), (" true ", True),
    ("", False), ("0", False), ("false", False), ("False", False), ("no", False), ("off", False),
])
def test_every_spelling_of_ci_counts(monkeypatch, value, expected):
    monkeypatch.setenv("CI", value)
    assert under_ci() is expected


def test_no_ci_variable_is_not_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert not under_ci()


def pytest_in_subprocess(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def test_browser_tests_fail_without_chromium_under_ci(tmp_path):
    out = pytest_in_subprocess(["--collect-only", "tests/browser"], CI="1",
                               CMBAGENT_CHROMIUM=str(tmp_path / "no-chromium"))
    assert out.returncode != 0, out.stdout[-2000:]
    assert "browser tests need Chromium" in out.stdout + out.stderr


TYPES_TEST = "tests/test_contracts.py::test_typescript_types_are_generated_from_the_schema"


def test_the_typescript_types_test_fails_without_node_under_ci(tmp_path):
    # No node on the PATH (the test's interpreter is started by its full path).
    out = pytest_in_subprocess(["-rs", TYPES_TEST], CI="True", PATH=str(tmp_path))
    assert out.returncode == 1, out.stdout[-2000:]
    assert "this test must run, but: node is not installed" in out.stdout
    out = pytest_in_subprocess(["-rs", TYPES_TEST], CI="false", PATH=str(tmp_path))
    assert out.returncode == 0 and "1 skipped" in out.stdout, out.stdout[-2000:]
