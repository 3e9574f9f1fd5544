"""Run owners: the name of the user a process acts for.

A run records its owner when it starts. A kernel and the Jupyter server that spawned
it share their environment, so both name the same user here: the server can then tell
which runs in a shared store are its user's.
"""

from __future__ import annotations

import getpass
import os


def default_owner() -> str:
    """The user this process acts for: ``$CMBAGENT_USER``, else ``$JUPYTERHUB_USER``
    (set in every single-user server and kernel JupyterHub spawns), else the OS user."""
    named = os.environ.get("CMBAGENT_USER") or os.environ.get("JUPYTERHUB_USER")
    if named:
        return named
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (e.g. an arbitrary container uid)
        return f"uid-{os.getuid()}"
