"""SQLite store: the embedded default. WAL mode, one writer transaction at a time.

Every write transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock up
front, so two processes never deadlock upgrading a read lock: no "database is
locked"), and waits up to ``busy_timeout`` for another writer to finish. The one
step SQLite does not wait for by itself, switching a new file to WAL, is retried
until the same timeout, so processes that open a new store together all succeed.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from typing import Iterable, Optional

import orjson

from ..errors import StoreError, UnknownRun
from ..events import new_uuid, now_iso
from ..results import DEFAULT_INLINE_MAX, ResultArchive
from ..snapshot import RunState
from .base import (
    LEASE_COLUMNS,
    RELEASE_LEASE,
    Commit,
    Lease,
    Store,
    command_state,
    mirrored_facts,
    ordered_edges,
    pending_command,
    plan_schema,
)
from .leases import LEASE_TTL_S, LeaseRow

SCHEMA_VERSION = 4

#: Statements that bring a store from version N to N + 1, applied in one transaction
#: with the version bump: a store is never half-migrated.
MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE commands ADD COLUMN code TEXT"],
    2: ["ALTER TABLE runs ADD COLUMN lease_ns TEXT",
        "CREATE INDEX IF NOT EXISTS runs_leased ON runs(lease_owner) WHERE lease_owner IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS commands_waiting ON commands(run_id) WHERE status='pending'"],
    # Results kept with completions (engine.results); nodes say what of theirs is kept
    # and which step added them (None: declared with the workflow).
    3: ["""CREATE TABLE IF NOT EXISTS results(
            run_id TEXT NOT NULL, node_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
            codec TEXT NOT NULL, size INTEGER NOT NULL, data BLOB, location TEXT,
            created_at TEXT NOT NULL, PRIMARY KEY(run_id, node_id)) WITHOUT ROWID""",
        "UPDATE nodes SET doc=json_set(doc, '$.result', json('null'), '$.added_by', json('null'))",
        "UPDATE runs SET doc=json_set(doc, '$.reopened', json('null'))"],
}

#: Events written by one INSERT at most: a power of two (a batch is written in powers of
#: two, so a connection's statement cache holds every statement it needs), and six
#: parameters a row within SQLite's limit on them (999 before 3.32, 32766 since).
_ROWS_PER_INSERT = 512 if sqlite3.sqlite_version_info >= (3, 32) else 128


@functools.lru_cache(maxsize=None)
def _insert_events(rows: int) -> str:
    """The INSERT of ``rows`` events (``run_id, seq, id, type, ts, data`` each)."""
    return "INSERT INTO events(run_id, seq, id, type, ts, data) VALUES" + ",".join(["(?,?,?,?,?,?)"] * rows)


#: SQLite's "busy" result code: another connection holds the lock it needs.
_SQLITE_BUSY = 5


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    return "locked" in str(exc) if code is None else code & 0xFF == _SQLITE_BUSY

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs(
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    first_seq INTEGER NOT NULL DEFAULT 1,
    lease_owner TEXT, lease_host TEXT, lease_pid INTEGER, lease_expires REAL,
    doc TEXT NOT NULL, lease_ns TEXT);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
CREATE INDEX IF NOT EXISTS runs_leased ON runs(lease_owner) WHERE lease_owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS nodes(
    run_id TEXT NOT NULL, id TEXT NOT NULL, status TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY(run_id, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edges(
    run_id TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL,
    PRIMARY KEY(run_id, source, target)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(
    gid INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,
    type TEXT NOT NULL, ts TEXT NOT NULL, data TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS events_run_seq ON events(run_id, seq);
CREATE TABLE IF NOT EXISTS commands(
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id TEXT NOT NULL UNIQUE, run_id TEXT NOT NULL, action TEXT NOT NULL,
    node_id TEXT, payload TEXT, ack TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, code TEXT, state TEXT,
    created_at TEXT NOT NULL, applied_at TEXT);
CREATE INDEX IF NOT EXISTS commands_pending ON commands(run_id, status);
CREATE INDEX IF NOT EXISTS commands_waiting ON commands(run_id) WHERE status='pending';
CREATE TABLE IF NOT EXISTS approvals(
    approval_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, node_id TEXT NOT NULL,
    prompt TEXT NOT NULL, status TEXT NOT NULL, comment TEXT,
    requested_at TEXT NOT NULL, answered_at TEXT);
CREATE TABLE IF NOT EXISTS results(
    run_id TEXT NOT NULL, node_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    codec TEXT NOT NULL, size INTEGER NOT NULL, data BLOB, location TEXT,
    created_at TEXT NOT NULL, PRIMARY KEY(run_id, node_id)) WITHOUT ROWID;
"""


class SQLiteStore(Store):
    """A store in one SQLite file, shared by any number of threads and processes."""

    def __init__(self, path: str, *, max_events_per_run: Optional[int] = None,
                 max_event_age_s: Optional[float] = None, busy_timeout_s: float = 60.0,
                 results_url: Optional[str] = None, result_inline_max: int = DEFAULT_INLINE_MAX,
                 keep_results: bool = True):
        path = os.path.abspath(os.path.expanduser(path))
        # Large results go to a directory beside the file (runs.sqlite -> runs.results/).
        super().__init__(max_events_per_run, max_event_age_s, ResultArchive(
            results_url or os.path.splitext(path)[0] + ".results", result_inline_max, keep_results))
        self.path = path
        self.url = "sqlite:///" + self.path.lstrip("/")
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._init_schema()

    # -- connections ------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (once per file; later connections find it done).

        The switch needs the file to itself, and SQLite answers "database is locked"
        at once, without its busy timeout, when another connection is in the way (a
        process opening the same new store): wait and try again, like a busy writer.
        """
        deadline = time.monotonic() + self._busy_ms / 1000
        delay = 0.001
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(0.05, delay * 2)

    def _init_schema(self) -> None:
        """Create a new store, upgrade an older one in place, or refuse a newer one."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            for statement in plan_schema(int(row[0]) if row else None, SCHEMA_VERSION, MIGRATIONS,
                                         _SCHEMA, self.path):
                conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        super().close()
        with self._conns_lock:
            for c in self._conns:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()
        self._local = threading.local()

    class _Tx:
        def __init__(self, conn: sqlite3.Connection, mode: str):
            self.conn, self.mode = conn, mode

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute(f"BEGIN {self.mode}")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _write(self):
        return self._Tx(self._conn(), "IMMEDIATE")

    _transaction = _write

    def _read(self):
        return self._Tx(self._conn(), "DEFERRED")

    def _query(self, statement: str, args: tuple = ()) -> list[tuple]:
        return self._conn().execute(statement, args).fetchall()

    # -- runs --------------------------------------------------------------------------------

    def create_run(self, view: RunState, first_event: dict, lease: Lease) -> None:
        run = view.run
        with self._write() as c:
            c.execute(
                f"INSERT INTO runs(id, created_at, owner, state, last_seq, {LEASE_COLUMNS}, doc)"
                " VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                (run["id"], run["created_at"], run["owner"], run["state"], view.seq, lease.owner,
                 lease.host, lease.pid, lease.ns, time.time() + LEASE_TTL_S, orjson.dumps(run)))
            self._write_nodes(c, run["id"], view.nodes.values())
            self._write_events(c, run["id"], [first_event])

    def run_doc(self, run_id: str) -> dict:
        row = self._conn().execute("SELECT doc FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise UnknownRun(run_id)
        return orjson.loads(row[0])

    def load_view(self, run_id: str) -> RunState:
        with self._read() as c:
            return self._view(c, run_id)

    def _view(self, c: sqlite3.Connection, run_id: str, lock: bool = False) -> RunState:
        row = c.execute("SELECT doc, last_seq FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise UnknownRun(run_id)
        nodes = {}
        for (doc,) in c.execute("SELECT doc FROM nodes WHERE run_id=?", (run_id,)):
            n = orjson.loads(doc)
            nodes[n["id"]] = n
        edges = c.execute("SELECT source, target FROM edges WHERE run_id=?", (run_id,)).fetchall()
        return RunState(orjson.loads(row[0]), nodes, ordered_edges(edges, nodes), row[1])

    def runs(self) -> list[dict]:
        rows = self._conn().execute("SELECT doc FROM runs ORDER BY created_at DESC, rowid DESC")
        return [orjson.loads(r[0]) for r in rows]

    # -- the log ------------------------------------------------------------------------------

    def event_rows(self, run_id: str, after_seq: int = 0, limit: Optional[int] = None) -> list[tuple]:
        sql = "SELECT seq, id, type, ts, data FROM events WHERE run_id=? AND seq>? ORDER BY seq"
        if limit is not None:
            return self._conn().execute(sql + " LIMIT ?", (run_id, after_seq, int(limit))).fetchall()
        return self._conn().execute(sql, (run_id, after_seq)).fetchall()

    def bounds(self, run_id: str) -> tuple[int, int]:
        row = self._conn().execute("SELECT first_seq, last_seq FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise UnknownRun(run_id)
        return row[0], row[1]

    def change_cursor(self) -> int:
        return self._conn().execute("SELECT COALESCE(MAX(gid), 0) FROM events").fetchone()[0]

    def changes_since(self, cursor: int) -> tuple[int, dict[str, int]]:
        rows = self._conn().execute(
            # NOT INDEXED: SQLite would otherwise scan the whole (run_id, seq) index for the
            # GROUP BY; a rowid range search reads only the new rows (the hub polls often).
            "SELECT run_id, MAX(seq), MAX(gid) FROM events NOT INDEXED WHERE gid>? GROUP BY run_id",
            (cursor,)
        ).fetchall()
        if not rows:
            return cursor, {}
        return max(r[2] for r in rows), {r[0]: r[1] for r in rows}

    # -- writing --------------------------------------------------------------------------------

    def _apply(self, c: sqlite3.Connection, cm: Commit) -> None:
        if cm.events:
            self._write_events(c, cm.run_id, cm.events)
        if cm.nodes:
            self._write_nodes(c, cm.run_id, cm.nodes.values())
        if cm.run_doc is not None or cm.events or cm.release_lease:
            sets, args = [], []
            if cm.run_doc is not None:
                sets += ["doc=?", "state=?"]
                args += [orjson.dumps(cm.run_doc), cm.run_doc["state"]]
            if cm.events:
                sets.append("last_seq=?")
                args.append(cm.events[-1]["seq"])
            if cm.release_lease:
                sets.append(RELEASE_LEASE)
            c.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id=?", (*args, cm.run_id))
        if cm.commands:
            ts = now_iso()
            c.executemany(
                "UPDATE commands SET status=?, error=?, code=?, state=?, applied_at=? WHERE command_id=?",
                [(st, err, code, state, ts, cid) for cid, st, err, code, state in cm.commands])

    def _write_events(self, c: sqlite3.Connection, run_id: str, events: list[dict]) -> None:
        # Many rows per statement (``_insert_events``), not executemany: the sqlite3 module
        # binds, steps and resets an executemany row by row, handing the GIL over and
        # taking it back (from the step threads recording meanwhile) each time. Measured
        # on 100k ctx.progress events: 3.4 -> 2.1 us of the writer's CPU per event.
        params = [x for e in events for x in (run_id, e["seq"], e["id"], e["event_type"], e["timestamp"],
                                              orjson.dumps(e["data"]).decode())]
        done, total = 0, len(events)
        while done < total:
            rows = _ROWS_PER_INSERT
            while rows > total - done:
                rows >>= 1
            c.execute(_insert_events(rows), params[6 * done:6 * (done + rows)])
            done += rows
        edges, requested, answered = mirrored_facts(run_id, events)
        if edges:
            c.executemany("INSERT OR IGNORE INTO edges(run_id, source, target) VALUES(?,?,?)", edges)
        if requested:
            c.executemany("INSERT INTO approvals(approval_id, run_id, node_id, prompt, status,"
                          " requested_at) VALUES(?,?,?,?, 'pending', ?)", requested)
        if answered:
            c.executemany("UPDATE approvals SET status=?, comment=?, answered_at=? WHERE approval_id=?",
                          answered)

    @staticmethod
    def _write_nodes(c: sqlite3.Connection, run_id: str, nodes: Iterable[dict]) -> None:
        c.executemany("INSERT OR REPLACE INTO nodes(run_id, id, status, doc) VALUES(?,?,?,?)",
                      [(run_id, n["id"], n["status"], orjson.dumps(n)) for n in nodes])

    # -- retention ------------------------------------------------------------------------------

    def trim(self) -> int:
        """Delete events beyond the retention limits; return how many. Snapshots are unaffected."""
        deleted = 0
        with self._write() as c:
            if self.max_events_per_run:
                cap = self.max_events_per_run
                for run_id, first, last in c.execute(
                        "SELECT id, first_seq, last_seq FROM runs WHERE last_seq - first_seq + 1 > ?",
                        (cap,)).fetchall():
                    deleted += self._trim_run(c, run_id, last - cap + 1)
            if self.max_event_age_s:
                for run_id, seq in c.execute(
                        "SELECT run_id, MAX(seq) FROM events WHERE ts < ? GROUP BY run_id",
                        (self._age_cutoff(),)).fetchall():
                    deleted += self._trim_run(c, run_id, seq + 1)
        return deleted

    @staticmethod
    def _trim_run(c: sqlite3.Connection, run_id: str, new_first: int) -> int:
        cur = c.execute("DELETE FROM events WHERE run_id=? AND seq<?", (run_id, new_first))
        c.execute("UPDATE runs SET first_seq=MAX(first_seq, ?) WHERE id=?", (new_first, run_id))
        return cur.rowcount

    # -- commands --------------------------------------------------------------------------------

    def pending_commands(self, run_id: str) -> list[dict]:
        rows = self._conn().execute(
            "SELECT command_id, action, node_id, payload FROM commands"
            " WHERE run_id=? AND status='pending' ORDER BY n", (run_id,)).fetchall()
        return [pending_command(r) for r in rows]

    def command_status(self, command_id: str) -> Optional[dict]:
        row = self._conn().execute("SELECT status, error, code, state FROM commands WHERE command_id=?",
                                   (command_id,)).fetchone()
        return command_state(row)

    # -- leases -----------------------------------------------------------------------------------

    def _tombstone(self, c: sqlite3.Connection, run_id: str) -> None:
        # A row at seq 0 in the tailed log: no reader of events asks for seq <= 0, and
        # retention by age trims it like any other.
        c.execute("INSERT INTO events(run_id, seq, id, type, ts, data) VALUES(?, 0, ?, 'run_deleted', ?, '{}')",
                  (run_id, new_uuid(), now_iso()))

    def _take_lease(self, c: sqlite3.Connection, run_id: str, lease: Lease) -> None:
        c.execute(f"UPDATE runs SET ({LEASE_COLUMNS}) = (?,?,?,?,?) WHERE id=?",
                  (lease.owner, lease.host, lease.pid, lease.ns, time.time() + LEASE_TTL_S, run_id))

    def renew_leases(self, owner: str, run_ids: list[str]) -> set[str]:
        renewed: set[str] = set()
        with self._write() as c:
            expires = time.time() + LEASE_TTL_S  # one host, one clock: the database's is this one
            for i in range(0, len(run_ids), 500):  # below SQLite's limit on bound parameters
                chunk = run_ids[i:i + 500]
                renewed.update(r[0] for r in c.execute(
                    f"UPDATE runs SET lease_expires=? WHERE lease_owner=? AND id IN ({','.join('?' * len(chunk))})"
                    " RETURNING id", (expires, owner, *chunk)).fetchall())
        return renewed

    def waiting_runs(self) -> set[str]:
        rows = self._conn().execute("SELECT DISTINCT run_id FROM commands WHERE status='pending'")
        return {r[0] for r in rows}

    def data_version(self) -> int:
        return self._conn().execute("PRAGMA data_version").fetchone()[0]

    def _leases(self) -> tuple[list[LeaseRow], Optional[float]]:
        rows = self._conn().execute(f"SELECT id, {LEASE_COLUMNS} FROM runs WHERE lease_owner IS NOT NULL")
        return rows.fetchall(), time.time()
