import os
import tempfile

pytest_plugins = ["pytest_jupyter.jupyter_server"]


def pytest_configure(config):
    # Never touch the user's real default store: anything (notebooks under nbval,
    # kernels, scripts) that opens the default store gets a throwaway one.
    if "CMBAGENT_DB_URL" not in os.environ:
        path = os.path.join(tempfile.mkdtemp(prefix="cmbagent-tests-"), "default.sqlite")
        os.environ["CMBAGENT_DB_URL"] = "sqlite:///" + path.lstrip("/")
    os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    # The browser tests run last: they are the slowest, and Playwright's event loop
    # must not be around while pytest-jupyter's tests run.
    items.sort(key=lambda item: "tests/browser/" in item.nodeid)
