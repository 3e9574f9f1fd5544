import os
import tempfile

import pytest

from pg_cluster import HOW_TO_ENABLE, PgServer, Unavailable
from support import skip_or_fail

pytest_plugins = ["pytest_jupyter.jupyter_server"]


def pytest_configure(config):
    # Never touch the user's real default store: anything (notebooks under nbval,
    # kernels, scripts) that opens the default store gets a throwaway one.
    if "CMBAGENT_DB_URL" not in os.environ:
        path = os.path.join(tempfile.mkdtemp(prefix="cmbagent-tests-"), "default.sqlite")
        os.environ["CMBAGENT_DB_URL"] = "sqlite:///" + path.lstrip("/")
    os.environ.setdefault("MPLBACKEND", "Agg")
    # The quickstart leaves its approval to a click for a while; nbval has nobody to click.
    os.environ.setdefault("QUICKSTART_ANSWER_AFTER_S", "0")


def pytest_collection_modifyitems(config, items):
    # The browser tests run last: they are the slowest, and Playwright's event loop
    # must not be around while pytest-jupyter's tests run.
    items.sort(key=lambda item: "tests/browser/" in item.nodeid)


# -- stores -----------------------------------------------------------------------------------
# The engine, session, server and client suites run against both stores: a test that
# takes ``db_url`` (or a ``store`` fixture built on it) runs once on a new SQLite file
# and once on a new PostgreSQL database.

_pg: dict = {}


def pg_server() -> PgServer:
    """The session's PostgreSQL server (started on first use); skips without one (fails
    under CI)."""
    if "server" not in _pg:
        try:
            _pg["server"] = PgServer.get()
        except Unavailable as exc:
            _pg["server"] = exc
    server = _pg["server"]
    if isinstance(server, Unavailable):
        skip_or_fail(f"PostgreSQL unavailable ({server}). {HOW_TO_ENABLE}")
    return server


@pytest.fixture(scope="module")
def own_pg_cluster():
    """A throwaway PostgreSQL cluster for this test module alone: for tests that freeze
    the database (``PgServer.frozen``), never the session's shared server."""
    try:
        server = PgServer.throwaway()
    except Unavailable as exc:
        skip_or_fail(f"PostgreSQL unavailable ({exc}). {HOW_TO_ENABLE}")
    yield server
    server.stop()


_used_databases: list[str] = []


def _drop_used_databases() -> None:
    import engine.store

    while _used_databases:
        url = _used_databases.pop()
        engine.store.close_store(url)
        _pg["server"].drop_database(url)


@pytest.fixture
def pg_url():
    """A new, empty PostgreSQL database.

    It is dropped (and this process's store objects on it closed) when the next test
    takes one, or at the end of the session: a test's Jupyter server is torn down by
    pytest-jupyter only after every other fixture, and must not lose its store first.
    """
    server = pg_server()
    _drop_used_databases()
    url = server.create_database()
    yield url
    _used_databases.append(url)


def pytest_sessionfinish(session):
    if isinstance(_pg.get("server"), PgServer):
        _drop_used_databases()


@pytest.fixture
def jp_serverapp(jp_serverapp, jp_asyncio_loop):
    """pytest-jupyter's server, whose cmbagent extension stops (its store calls ended)
    before the test's store is closed: pytest-jupyter stops the server only after every
    other fixture, and a store call still running in the extension's thread pool while
    another thread closes the SQLite store would crash the process."""
    yield jp_serverapp
    ext = jp_serverapp.web_app.settings.get("cmbagent_jupyter")
    if ext is not None:
        jp_asyncio_loop.run_until_complete(ext.stop_extension())


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A new store's URL, once per kind of store."""
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_url")
        return
    url = "sqlite:///" + str(tmp_path / "runs.sqlite").lstrip("/")
    yield url
    import engine.store

    engine.store.close_store(url)
