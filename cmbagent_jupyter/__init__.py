"""cmbagent-jupyter: Jupyter server extension, notebook widget and client for the workflow engine."""

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    from .extension import CmbAgentApp

    return [{"module": "cmbagent_jupyter", "app": CmbAgentApp}]
