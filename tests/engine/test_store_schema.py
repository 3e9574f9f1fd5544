"""Schema versions: an older store is upgraded in place, a newer one is refused."""

import sqlite3

import pytest

from engine import StoreError, Workflow, open_store
from engine.store.sqlite import SCHEMA_VERSION, _SCHEMA

V1_COMMANDS = "status TEXT NOT NULL, error TEXT, state TEXT"


def make_v1_store(path):
    schema = _SCHEMA.replace("status TEXT NOT NULL, error TEXT, code TEXT, state TEXT", V1_COMMANDS)
    assert schema != _SCHEMA
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    conn.execute("INSERT INTO meta VALUES('schema_version', '1')")
    conn.commit()
    conn.close()


def test_a_version_1_store_is_upgraded_and_works(tmp_path):
    path = tmp_path / "v1.sqlite"
    make_v1_store(path)
    store = open_store(str(path))
    version = store._conn().execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert int(version[0]) == SCHEMA_VERSION
    wf = Workflow("after upgrade")

    @wf.step()
    def only():
        return 1

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed"
    with pytest.raises(Exception, match="cannot pause a run that is completed"):
        run.pause()


def test_a_store_from_a_newer_version_is_refused_untouched(tmp_path):
    path = tmp_path / "future.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer cmbagent-jupyter .*upgrade cmbagent-jupyter"):
        open_store(str(path))
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert tables == {"meta", "sqlite_autoindex_meta_1"}
