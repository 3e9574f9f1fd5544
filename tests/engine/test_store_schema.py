"""Schema versions: an older store is upgraded in place, a newer one is refused."""

import sqlite3
import threading

import pytest

from engine import StoreError, Workflow, open_store
from engine.store.sqlite import SCHEMA_VERSION, _SCHEMA
from engine_support import raw

V1_COMMANDS = "status TEXT NOT NULL, error TEXT, state TEXT"


def make_v1_store(path):
    # The current schema without what versions 2 and 3 added.
    schema = _SCHEMA
    for added, before in [("status TEXT NOT NULL, error TEXT, code TEXT, state TEXT", V1_COMMANDS),
                          ("doc TEXT NOT NULL, lease_ns TEXT)", "doc TEXT NOT NULL)")]:
        assert added in schema
        schema = schema.replace(added, before)
    schema = "\n".join(line for line in schema.splitlines()
                       if "runs_leased" not in line and "commands_waiting" not in line)
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


# -- both stores ----------------------------------------------------------------------------------

def backend(db_url: str):
    import engine.store.postgres as pg
    import engine.store.sqlite as lite

    return lite if db_url.startswith("sqlite") else pg


def stored_version(db_url: str) -> int:
    return int(raw(db_url, "SELECT value FROM meta WHERE key='schema_version'")[0][0])


def columns(db_url: str, table: str) -> set[str]:
    if db_url.startswith("sqlite"):
        return {r[1] for r in raw(db_url, f"PRAGMA table_info({table})")}
    return {r[0] for r in raw(db_url, "SELECT column_name FROM information_schema.columns"
                                      f" WHERE table_name='{table}'")}


def test_newer_store_is_refused_untouched_on_both_stores(db_url):
    future = backend(db_url).SCHEMA_VERSION + 1
    raw(db_url, "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"INSERT INTO meta VALUES('schema_version', '{future}')")
    with pytest.raises(StoreError, match=f"schema {future}.*upgrade cmbagent-jupyter"):
        open_store(db_url)
    assert stored_version(db_url) == future
    assert columns(db_url, "runs") == set()  # nothing was created


def test_a_failing_upgrade_changes_nothing_and_a_good_one_keeps_the_runs(db_url, monkeypatch):
    import engine.store

    mod = backend(db_url)
    store = open_store(db_url)
    wf = Workflow("before the upgrade")

    @wf.step()
    def only():
        return 41

    run = wf.run(store=store, timeout=30)
    events = run.events().dicts()
    engine.store.close_store(db_url)
    current = mod.SCHEMA_VERSION

    # A migration whose second statement fails: the first must not stay applied.
    monkeypatch.setattr(mod, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(mod.MIGRATIONS, current, ["ALTER TABLE runs ADD COLUMN note TEXT",
                                                  "ALTER TABLE no_such_table ADD COLUMN x TEXT"])
    with pytest.raises(StoreError, match="cannot open store"):
        open_store(db_url)
    assert stored_version(db_url) == current
    assert "note" not in columns(db_url, "runs")

    # The same upgrade done right: applied once, and what the store held is intact.
    monkeypatch.setitem(mod.MIGRATIONS, current, ["ALTER TABLE runs ADD COLUMN note TEXT"])
    upgraded = open_store(db_url)
    assert stored_version(db_url) == current + 1
    assert "note" in columns(db_url, "runs")
    assert upgraded.run(run.id).events().dicts() == events
    assert upgraded.run(run.id).state == "completed"


def test_an_upgrade_path_that_does_not_exist_is_refused_with_what_to_do(db_url, monkeypatch):
    import engine.store

    mod = backend(db_url)
    open_store(db_url)
    engine.store.close_store(db_url)
    monkeypatch.setattr(mod, "SCHEMA_VERSION", mod.SCHEMA_VERSION + 1)
    monkeypatch.delitem(mod.MIGRATIONS, mod.SCHEMA_VERSION - 1, raising=False)
    with pytest.raises(StoreError, match="cannot upgrade .*start a new store"):
        open_store(db_url)
    assert stored_version(db_url) == mod.SCHEMA_VERSION - 1


def test_processes_opening_a_new_store_at_once_create_it_once(db_url, tmp_path):
    import subprocess
    import sys

    script = ("import sys, engine; s = engine.open_store(sys.argv[1]); "
              "print(len(s.runs()))")
    procs = [subprocess.Popen([sys.executable, "-c", script, db_url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["0"] * 4
    assert stored_version(db_url) == backend(db_url).SCHEMA_VERSION


def indexes(db_url: str) -> set[str]:
    if db_url.startswith("sqlite"):
        return {r[0] for r in raw(db_url, "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    return {r[0] for r in raw(db_url, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}


#: What the latest migration added, taken away again: the store as the previous version left it.
PREVIOUS_VERSION = {
    "sqlite": (3, ["DROP TABLE results",
                   "UPDATE nodes SET doc=json_remove(doc, '$.result', '$.added_by')",
                   "UPDATE runs SET doc=json_remove(doc, '$.reopened')"]),
    "postgresql": (2, ["DROP TABLE results", "DROP TABLE tombstones",
                       "UPDATE nodes SET doc=(doc::jsonb - 'result' - 'added_by')::text",
                       "UPDATE runs SET doc=(doc::jsonb - 'reopened')::text"]),
}


def test_the_previous_schema_is_upgraded_in_place_to_keep_results(db_url):
    """SQLite 3 -> 4, PostgreSQL 2 -> 3: a results table, and documents that say what
    of a node's result is kept and who added it. The runs stay, their snapshots are what
    a replay of their log gives; the result is a new store's schema."""
    import engine.store
    from engine.snapshot import RunState

    mod = backend(db_url)
    store = open_store(db_url)
    wf = Workflow("before the upgrade")
    wf.step("only")(lambda: 41)
    run = wf.run(store=store, timeout=30)
    events = run.events().dicts()
    engine.store.close_store(db_url)
    new_results, new_indexes = columns(db_url, "results"), indexes(db_url)

    version, undo = PREVIOUS_VERSION["sqlite" if db_url.startswith("sqlite") else "postgresql"]
    assert version == mod.SCHEMA_VERSION - 1
    raw(db_url, *undo, f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'")
    assert not columns(db_url, "results")

    upgraded = open_store(db_url)
    assert stored_version(db_url) == mod.SCHEMA_VERSION
    assert (columns(db_url, "results"), indexes(db_url)) == (new_results, new_indexes)
    assert upgraded.run(run.id).events().dicts() == events
    replayed = RunState.replay(run.id, events).snapshot()
    assert upgraded.snapshot(run.id)["nodes"] == [{**n, "result": None} for n in replayed["nodes"]]
    assert upgraded.snapshot(run.id)["run"] == replayed["run"]
    later = Workflow("after the upgrade")
    later.step("answers")(lambda: {"answer": 42})
    done = later.run(upgraded, timeout=30)
    engine.store.close_store(db_url)
    assert open_store(db_url).run(done.id).result("answers") == {"answer": 42}


def test_processes_opening_a_new_sqlite_store_together_all_succeed(tmp_path):
    """Eight processes, released at once by a barrier, open the same new file while
    another connection is in the middle of writing to it (as one creating the schema
    would be): schema creation and the switch to WAL wait their turn, and nobody gets
    "database is locked"."""
    import multiprocessing
    import time

    from engine_support import open_at_barrier

    rounds, n = 10, 8
    paths = [str(tmp_path / f"new-{i}.sqlite") for i in range(rounds)]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=open_at_barrier, args=(paths, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        for path in paths:
            first = sqlite3.connect(path, isolation_level=None)
            first.execute("BEGIN IMMEDIATE")  # the first opener, still creating the file
            barrier.wait(60)
            time.sleep(0.2)
            first.execute("ROLLBACK")
            first.close()
        outcomes = [results.get(timeout=120) for _ in range(rounds * n)]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    failures = [o for o in outcomes if o != "ok"]
    assert not failures, f"{len(failures)} of {rounds * n} opens failed; first:\n{failures[0]}"
    for path in paths:
        assert stored_version("sqlite://" + path) == SCHEMA_VERSION
