"""cmbagent-jupyter: Jupyter server extension, notebook widget and client for the workflow engine."""

__version__ = "0.1.0"
