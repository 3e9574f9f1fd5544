"""The extension is installed and enabled where ``jupyter server`` looks for it."""

import re

import pytest


@pytest.mark.extension_list
def test_extension_list_shows_cmbagent_jupyter_ok(extension_list_output):
    # `extension list` exits 0 even when an extension fails to load: read what it says
    out = re.sub(r"\x1b\[[0-9;]*m", "", extension_list_output)
    assert "cmbagent_jupyter" in out, out
    assert re.search(r"cmbagent_jupyter enabled", out), out
    assert re.search(r"cmbagent_jupyter \S+ OK", out), out
