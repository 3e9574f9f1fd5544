"""Who a process's runs belong to when started without an explicit owner."""

import getpass

from engine import Workflow
from engine.owners import default_owner


def test_default_owner_prefers_cmbagent_user_then_jupyterhub_user_then_the_os_user(monkeypatch):
    monkeypatch.delenv("CMBAGENT_USER", raising=False)
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    assert default_owner() == getpass.getuser()
    monkeypatch.setenv("JUPYTERHUB_USER", "hubuser")
    assert default_owner() == "hubuser"
    monkeypatch.setenv("CMBAGENT_USER", "someone")
    assert default_owner() == "someone"
    monkeypatch.setenv("CMBAGENT_USER", "")  # empty counts as unset
    assert default_owner() == "hubuser"


def test_a_run_records_its_owner(store, monkeypatch):
    monkeypatch.setenv("CMBAGENT_USER", "someone")
    wf = Workflow("owned")

    @wf.step()
    def a():
        return 1

    assert wf.run(store=store, timeout=30).info()["owner"] == "someone"
    assert wf.run(store=store, timeout=30, owner="alice").info()["owner"] == "alice"
