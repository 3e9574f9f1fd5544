"""PostgreSQL store: the scale-out backend (psycopg 3 with a psycopg-pool pool).

Any number of processes — kernels running executors, Jupyter server replicas — share
one database. What keeps the log exact with concurrent writers:

- **Gap-free seq, assigned in the transaction.** A write transaction locks the run's
  row (``SELECT ... FOR UPDATE``) and its events must continue ``runs.last_seq``
  exactly; the row's ``last_seq`` moves in the same transaction. A rolled-back
  transaction leaves ``last_seq`` where it was, so no seq is ever skipped (no
  PostgreSQL sequence is involved). The run's lease holder is its only regular
  writer; anyone else (recording a lost executor) goes through the same row lock.
- **A commit clock for tailers.** Every transaction that appends events bumps a
  one-row counter as its last statement and stamps the runs it touched with it
  (``runs.changed``). The row lock on the counter orders those commits, so "runs
  with ``changed`` > my cursor" never misses a commit that lands after the cursor
  was read (a BIGSERIAL would: ids are handed out before commit, in another order).
- **LISTEN/NOTIFY only wakes.** Commits send ``NOTIFY cmbagent_events, <run>``
  and commands ``NOTIFY cmbagent_commands, <run>``; hubs and executors sleep until
  woken. The log stays the truth: a lost notification (the listening connection
  dropped) is followed by a wake-up of everyone on reconnect, and the hubs'
  periodic re-check bounds the delay; nothing is read from the notification itself.
- **Lease times on the database's clock.** Leases are written as ``now()`` plus the
  TTL and judged against ``now()``, so hosts whose clocks disagree never see each
  other's live runs as expired (engine.store.leases).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional

import orjson

from ..errors import StoreError, UnknownRun
from ..events import now_iso
from ..results import DEFAULT_INLINE_MAX, ResultArchive
from ..snapshot import RunState
from .base import (
    COMMANDS_CHANNEL,
    EVENTS_CHANNEL,
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
from .redact import redact_url

try:
    import psycopg
    from psycopg_pool import ConnectionPool
except ImportError:  # pragma: no cover - depends on the installation
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

#: Statements that bring a store from version N to N + 1. They run in the same
#: transaction as the version bump (PostgreSQL DDL is transactional): a store is
#: never half-migrated.
_RESULTS_TABLE = """CREATE TABLE results(
    run_id TEXT NOT NULL, node_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    codec TEXT NOT NULL, size BIGINT NOT NULL, data BYTEA, location TEXT,
    created_at TEXT NOT NULL, PRIMARY KEY(run_id, node_id))"""
#: Deleted runs, stamped with the commit clock like runs (changes_since reports them).
_TOMBSTONES_TABLE = """CREATE TABLE tombstones(
    run_id TEXT PRIMARY KEY, changed BIGINT NOT NULL, deleted_at TEXT NOT NULL)"""

MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE runs ADD COLUMN lease_ns TEXT",
        "CREATE INDEX runs_leased ON runs(lease_owner) WHERE lease_owner IS NOT NULL"],
    # Results kept with completions (engine.results); nodes say what of theirs is kept
    # and which step added them (None: declared with the workflow).
    2: [_RESULTS_TABLE, _TOMBSTONES_TABLE, "CREATE INDEX tombstones_changed ON tombstones(changed)",
        """UPDATE nodes SET doc = (doc::jsonb || '{"result": null, "added_by": null}'::jsonb)::text""",
        """UPDATE runs SET doc = (doc::jsonb || '{"reopened": null}'::jsonb)::text"""],
}

#: The database's clock, in epoch seconds: what lease times are written and judged in.
_DB_NOW = "extract(epoch from now())::float8"

#: Any fixed number: the advisory lock that serializes schema creation and upgrades.
_SCHEMA_LOCK = 0x636D6261  # "cmba"

_SCHEMA = """
CREATE TABLE clock(id INTEGER PRIMARY KEY CHECK (id = 1), n BIGINT NOT NULL);
INSERT INTO clock VALUES (1, 0);
CREATE TABLE runs(
    n BIGSERIAL UNIQUE,
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
    first_seq BIGINT NOT NULL DEFAULT 1,
    changed BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT, lease_host TEXT, lease_pid INTEGER, lease_expires DOUBLE PRECISION,
    doc TEXT NOT NULL, lease_ns TEXT);
CREATE INDEX runs_changed ON runs(changed);
CREATE INDEX runs_leased ON runs(lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX runs_created ON runs(created_at);
CREATE TABLE nodes(
    run_id TEXT NOT NULL, id TEXT NOT NULL, status TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY(run_id, id));
CREATE TABLE edges(
    run_id TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL,
    PRIMARY KEY(run_id, source, target));
CREATE TABLE events(
    run_id TEXT NOT NULL, seq BIGINT NOT NULL, id TEXT NOT NULL,
    type TEXT NOT NULL, ts TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY(run_id, seq));
CREATE TABLE commands(
    n BIGSERIAL PRIMARY KEY,
    command_id TEXT NOT NULL UNIQUE, run_id TEXT NOT NULL, action TEXT NOT NULL,
    node_id TEXT, payload TEXT, ack TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, code TEXT, state TEXT,
    created_at TEXT NOT NULL, applied_at TEXT);
CREATE INDEX commands_pending ON commands(run_id, status);
CREATE TABLE approvals(
    approval_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, node_id TEXT NOT NULL,
    prompt TEXT NOT NULL, status TEXT NOT NULL, comment TEXT,
    requested_at TEXT NOT NULL, answered_at TEXT);
""" + _RESULTS_TABLE + ";" + _TOMBSTONES_TABLE + """;
CREATE INDEX tombstones_changed ON tombstones(changed)
"""


class PostgresStore(Store):
    """A store in one PostgreSQL database, shared by any number of processes and hosts."""

    pushes_changes = True

    def __init__(self, conninfo: str, *, max_events_per_run: Optional[int] = None,
                 max_event_age_s: Optional[float] = None, pool_size: int = 8,
                 connect_timeout_s: float = 10.0, results_url: Optional[str] = None,
                 result_inline_max: int = DEFAULT_INLINE_MAX, keep_results: bool = True):
        # Without results_url every result is kept in the database (no shared directory
        # is known to every process that reads it).
        super().__init__(max_events_per_run, max_event_age_s,
                         ResultArchive(results_url, result_inline_max, keep_results))
        if psycopg is None:
            raise StoreError("a postgresql:// store needs psycopg 3 and psycopg-pool: "
                             "pip install 'cmbagent-jupyter[postgres]'")
        self.url = redact_url(conninfo)  # shown in logs and messages: never the password
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout_s
        try:
            # Fail fast, with the server's own message, when the database is unreachable.
            psycopg.connect(conninfo, connect_timeout=max(1, int(connect_timeout_s))).close()
        except psycopg.Error as exc:
            # Not chained: the driver's own error may quote the conninfo, password and all.
            raise StoreError(f"cannot connect to {self.url}: {self.redact(exc)}".strip()) from None
        # check: a pooled connection is tested before use (an empty query), so one that
        # died with a database restart or a killed backend is replaced, not handed out.
        self._pool = ConnectionPool(conninfo, min_size=1, max_size=max(1, pool_size),
                                    kwargs={"autocommit": True}, open=True,
                                    check=ConnectionPool.check_connection,
                                    timeout=connect_timeout_s, name="cmbagent-store")
        self._listener: Optional[_Listener] = None
        self._listener_lock = threading.Lock()
        self._init_schema()

    def __repr__(self) -> str:
        return f"<PostgresStore {self.url}>"

    def redact(self, exc: BaseException) -> str:
        # psycopg's errors may quote the conninfo they could not use, password and all.
        return redact_url(str(exc), self._conninfo)

    # -- schema -------------------------------------------------------------------------

    def _init_schema(self) -> None:
        """Create a new store, upgrade an older one in place, or refuse a newer one.

        One transaction, under an advisory lock (two processes opening a new store at
        once create it once): it commits all of it or nothing.
        """
        try:
            with self._pool.connection() as c, c.transaction():
                c.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                c.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                statements = plan_schema(int(row[0]) if row else None, SCHEMA_VERSION, MIGRATIONS,
                                         _SCHEMA, f"the store {self.url}")
                for statement in statements:
                    c.execute(statement)
                c.execute("INSERT INTO meta VALUES('schema_version', %s)"
                          " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (str(SCHEMA_VERSION),))
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"cannot open store {self.url}: {self.redact(exc)}") from None
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        super().close()
        with self._listener_lock:
            if self._listener is not None:
                self._listener.stop()
                self._listener = None
        self._pool.close()

    # -- notifications ---------------------------------------------------------------------

    def subscribe(self, callback: Callable[[str, Optional[str]], None]) -> Callable[[], None]:
        with self._listener_lock:
            if self._listener is None:
                self._listener = _Listener(self._conninfo, self.redact)
                self._listener.start()
            listener = self._listener
        return listener.add(callback)

    # -- runs --------------------------------------------------------------------------------

    def create_run(self, view: RunState, first_event: dict, lease: Lease) -> None:
        run = view.run
        with self._pool.connection() as c, c.transaction():
            c.execute(
                f"INSERT INTO runs(id, created_at, owner, state, last_seq, {LEASE_COLUMNS}, doc)"
                f" VALUES(%s,%s,%s,%s,%s,%s,%s,%s,%s,{_DB_NOW} + %s,%s)",
                (run["id"], run["created_at"], run["owner"], run["state"], view.seq, lease.owner,
                 lease.host, lease.pid, lease.ns, LEASE_TTL_S, _json(run)))
            self._write_nodes(c, run["id"], view.nodes.values())
            self._write_events(c, run["id"], [first_event])
            self._appended(c, [run["id"]])

    def run_doc(self, run_id: str) -> dict:
        _storable(run_id)
        with self._pool.connection() as c:
            row = c.execute("SELECT doc FROM runs WHERE id=%s", (run_id,)).fetchone()
        if row is None:
            raise UnknownRun(run_id)
        return orjson.loads(row[0])

    def load_view(self, run_id: str) -> RunState:
        with self._pool.connection() as c, c.transaction():
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return self._view(c, run_id)

    def _view(self, c, run_id: str, lock: bool = False) -> RunState:
        _storable(run_id)
        row = c.execute("SELECT doc, last_seq FROM runs WHERE id=%s" + (self._LOCK_ROW if lock else ""),
                        (run_id,)).fetchone()
        if row is None:
            raise UnknownRun(run_id)
        nodes = {}
        for (doc,) in c.execute("SELECT doc FROM nodes WHERE run_id=%s", (run_id,)):
            n = orjson.loads(doc)
            nodes[n["id"]] = n
        edges = c.execute("SELECT source, target FROM edges WHERE run_id=%s", (run_id,)).fetchall()
        return RunState(orjson.loads(row[0]), nodes, ordered_edges(edges, nodes), row[1])

    def runs(self) -> list[dict]:
        with self._pool.connection() as c:
            rows = c.execute("SELECT doc FROM runs ORDER BY created_at DESC, n DESC").fetchall()
        return [orjson.loads(r[0]) for r in rows]

    # -- the log ------------------------------------------------------------------------------

    def event_rows(self, run_id: str, after_seq: int = 0, limit: Optional[int] = None) -> list[tuple]:
        sql = "SELECT seq, id, type, ts, data FROM events WHERE run_id=%s AND seq>%s ORDER BY seq"
        if "\x00" in run_id:
            return []
        with self._pool.connection() as c:
            if limit is not None:
                return c.execute(sql + " LIMIT %s", (run_id, after_seq, int(limit))).fetchall()
            return c.execute(sql, (run_id, after_seq)).fetchall()

    def bounds(self, run_id: str) -> tuple[int, int]:
        _storable(run_id)
        with self._pool.connection() as c:
            row = c.execute("SELECT first_seq, last_seq FROM runs WHERE id=%s", (run_id,)).fetchone()
        if row is None:
            raise UnknownRun(run_id)
        return row[0], row[1]

    def change_cursor(self) -> int:
        with self._pool.connection() as c:
            return c.execute("SELECT n FROM clock").fetchone()[0]

    def changes_since(self, cursor: int) -> tuple[int, dict[str, int]]:
        with self._pool.connection() as c:
            rows = c.execute("SELECT id, last_seq, changed FROM runs WHERE changed > %s UNION ALL"
                             " SELECT run_id, 0, changed FROM tombstones WHERE changed > %s",
                             (cursor, cursor)).fetchall()
        if not rows:
            return cursor, {}
        return max(r[2] for r in rows), {r[0]: r[1] for r in rows}

    # -- writing --------------------------------------------------------------------------------

    def transient(self, exc: Exception) -> bool:
        return (not self.closed and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
                and not isinstance(exc, psycopg.errors.QueryCanceled))

    # -- the pieces of the shared algorithms (engine.store.base) ------------------------------

    _LOCK_ROW = " FOR UPDATE"

    @contextmanager
    def _transaction(self) -> Iterator["psycopg.Connection"]:
        with self._pool.connection() as c, c.transaction():
            yield c

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    _UPSERT_RESULT = ("INSERT INTO results(run_id, node_id, fingerprint, codec, size, data, location,"
                      " created_at) VALUES(?,?,?,?,?,?,?,?) ON CONFLICT (run_id, node_id) DO UPDATE SET"
                      " fingerprint=EXCLUDED.fingerprint, codec=EXCLUDED.codec, size=EXCLUDED.size,"
                      " data=EXCLUDED.data, location=EXCLUDED.location, created_at=EXCLUDED.created_at")

    def _executemany(self, c, statement: str, rows: list[tuple]) -> None:
        with c.cursor() as cur:
            cur.executemany(statement, rows)

    def _query(self, statement: str, args: tuple = ()) -> list[tuple]:
        if any(isinstance(a, str) and "\x00" in a for a in args):
            return []  # PostgreSQL text cannot hold NUL: nothing stored matches
        with self._pool.connection() as c:
            return c.execute(self._sql(statement), args).fetchall()

    def _command_added(self, c, run_id: str) -> None:
        c.execute("SELECT pg_notify(%s, %s)", (COMMANDS_CHANNEL, run_id))

    def _committed(self, c, cm: Commit, head: Optional[tuple]) -> bool:
        # A retry after the connection dropped during COMMIT: the batch may have been
        # committed after all. Its events are then in the log, ids and all.
        if head is None or not cm.events or cm.events[0]["seq"] > head[0]:
            return False
        row = c.execute("SELECT id FROM events WHERE run_id=%s AND seq=%s",
                        (cm.run_id, cm.events[-1]["seq"])).fetchone()
        return row is not None and row[0] == cm.events[-1]["id"]

    def _appended(self, c, run_ids: list[str]) -> None:
        """Stamp ``run_ids`` with the next commit-clock value and wake the tailers.

        The last statements of a transaction: the clock row stays locked (and other
        writers wait for it) only from here to the commit.
        """
        if not run_ids:
            return
        n = c.execute("UPDATE clock SET n = n + 1 RETURNING n").fetchone()[0]
        c.execute("UPDATE runs SET changed=%s WHERE id = ANY(%s)", (n, run_ids))
        for run_id in run_ids:
            c.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, run_id))

    def _apply(self, c, cm: Commit) -> None:
        if cm.events:
            self._write_events(c, cm.run_id, cm.events)
        if cm.nodes:
            self._write_nodes(c, cm.run_id, cm.nodes.values())
        if cm.run_doc is not None or cm.events or cm.release_lease:
            sets, args = [], []
            if cm.run_doc is not None:
                sets += ["doc=%s", "state=%s"]
                args += [_json(cm.run_doc), cm.run_doc["state"]]
            if cm.events:
                sets.append("last_seq=%s")
                args.append(cm.events[-1]["seq"])
            if cm.release_lease:
                sets.append(RELEASE_LEASE)
            c.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id=%s", (*args, cm.run_id))
        if cm.commands:
            ts = now_iso()
            with c.cursor() as cur:
                cur.executemany(
                    "UPDATE commands SET status=%s, error=%s, code=%s, state=%s, applied_at=%s"
                    " WHERE command_id=%s",
                    [(st, err, code, state, ts, cid) for cid, st, err, code, state in cm.commands])

    def _write_events(self, c, run_id: str, events: list[dict]) -> None:
        with c.cursor() as cur:
            with cur.copy("COPY events(run_id, seq, id, type, ts, data) FROM STDIN") as copy:
                for e in events:
                    copy.write_row((run_id, e["seq"], e["id"], e["event_type"], e["timestamp"],
                                    orjson.dumps(e["data"]).decode()))
            edges, requested, answered = mirrored_facts(run_id, events)
            if edges:
                cur.executemany("INSERT INTO edges(run_id, source, target) VALUES(%s,%s,%s)"
                                " ON CONFLICT DO NOTHING", edges)
            if requested:
                cur.executemany("INSERT INTO approvals(approval_id, run_id, node_id, prompt, status,"
                                " requested_at) VALUES(%s,%s,%s,%s, 'pending', %s)", requested)
            if answered:
                cur.executemany("UPDATE approvals SET status=%s, comment=%s, answered_at=%s"
                                " WHERE approval_id=%s", answered)

    @staticmethod
    def _write_nodes(c, run_id: str, nodes: Iterable[dict]) -> None:
        rows = [(run_id, n["id"], n["status"], _json(n)) for n in nodes]
        if rows:
            with c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO nodes(run_id, id, status, doc) VALUES(%s,%s,%s,%s)"
                    " ON CONFLICT (run_id, id) DO UPDATE SET status=EXCLUDED.status, doc=EXCLUDED.doc",
                    rows)

    # -- retention ------------------------------------------------------------------------------

    def trim(self) -> int:
        """Delete events beyond the retention limits; return how many. Snapshots are unaffected."""
        deleted = 0
        with self._pool.connection() as c, c.transaction():
            cuts: dict[str, int] = {}
            if self.max_events_per_run:
                cap = self.max_events_per_run
                for run_id, last in c.execute(
                        "SELECT id, last_seq FROM runs WHERE last_seq - first_seq + 1 > %s",
                        (cap,)).fetchall():
                    cuts[run_id] = last - cap + 1
            if self.max_event_age_s:
                for run_id, seq in c.execute(
                        "SELECT run_id, MAX(seq) FROM events WHERE ts < %s GROUP BY run_id",
                        (self._age_cutoff(),)).fetchall():
                    cuts[run_id] = max(cuts.get(run_id, 0), seq + 1)
            for run_id, new_first in cuts.items():
                cur = c.execute("DELETE FROM events WHERE run_id=%s AND seq<%s", (run_id, new_first))
                deleted += cur.rowcount
                c.execute("UPDATE runs SET first_seq=GREATEST(first_seq, %s) WHERE id=%s",
                          (new_first, run_id))
        return deleted

    # -- commands --------------------------------------------------------------------------------

    def pending_commands(self, run_id: str) -> list[dict]:
        with self._pool.connection() as c:
            rows = c.execute(
                "SELECT command_id, action, node_id, payload FROM commands"
                " WHERE run_id=%s AND status='pending' ORDER BY n", (run_id,)).fetchall()
        return [pending_command(r) for r in rows]

    def command_status(self, command_id: str) -> Optional[dict]:
        with self._pool.connection() as c:
            row = c.execute("SELECT status, error, code, state FROM commands WHERE command_id=%s",
                            (command_id,)).fetchone()
        return command_state(row)

    # -- leases -----------------------------------------------------------------------------------

    def _tombstone(self, c, run_id: str) -> None:
        n = c.execute("UPDATE clock SET n = n + 1 RETURNING n").fetchone()[0]
        c.execute("INSERT INTO tombstones(run_id, changed, deleted_at) VALUES(%s,%s,%s)", (run_id, n, now_iso()))
        c.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, run_id))

    def _take_lease(self, c, run_id: str, lease: Lease) -> None:
        c.execute(f"UPDATE runs SET ({LEASE_COLUMNS}) = (%s,%s,%s,%s,{_DB_NOW} + %s) WHERE id=%s",
                  (lease.owner, lease.host, lease.pid, lease.ns, LEASE_TTL_S, run_id))

    def renew_leases(self, owner: str, run_ids: list[str]) -> set[str]:
        with self._pool.connection() as c:
            rows = c.execute(f"UPDATE runs SET lease_expires = {_DB_NOW} + %s"
                             " WHERE lease_owner=%s AND id = ANY(%s) RETURNING id",
                             (LEASE_TTL_S, owner, run_ids)).fetchall()
        return {r[0] for r in rows}

    def waiting_runs(self) -> set[str]:
        with self._pool.connection() as c:
            rows = c.execute("SELECT DISTINCT run_id FROM commands WHERE status='pending'").fetchall()
        return {r[0] for r in rows}

    def _leases(self) -> tuple[list[LeaseRow], Optional[float]]:
        with self._pool.connection() as c:
            rows = c.execute(f"SELECT id, {LEASE_COLUMNS}, {_DB_NOW} FROM runs"
                             " WHERE lease_owner IS NOT NULL").fetchall()
            if not rows:
                return [], None
        return [r[:-1] for r in rows], rows[0][-1]


class _Listener(threading.Thread):
    """One LISTEN connection per store object; calls back on every notification.

    ``callback(channel, run_id)``; ``(None, None)`` after (re)connecting, when
    notifications may have been missed: listeners re-check what they follow.
    """

    def __init__(self, conninfo: str, redact: Callable[[BaseException], str]):
        super().__init__(name="cmbagent-pg-listen", daemon=True)
        self._conninfo = conninfo
        self._redact = redact
        self._callbacks: list[Callable[[Optional[str], Optional[str]], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.connected = threading.Event()

    def add(self, callback) -> Callable[[], None]:
        with self._lock:
            self._callbacks = [*self._callbacks, callback]

        def remove() -> None:
            with self._lock:
                self._callbacks = [cb for cb in self._callbacks if cb is not callback]

        return remove

    def stop(self) -> None:
        self._stop.set()

    def _dispatch(self, channel: Optional[str], run_id: Optional[str]) -> None:
        for cb in self._callbacks:
            try:
                cb(channel, run_id)
            except Exception:  # one subscriber's failure must not silence the others
                log.exception("cmbagent store: a change subscriber failed")

    def run(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    conn.execute(f"LISTEN {COMMANDS_CHANNEL}")
                    self.connected.set()
                    delay = 0.05
                    self._dispatch(None, None)
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            self._dispatch(n.channel, n.payload)
            except psycopg.Error as exc:
                self.connected.clear()
                if not self._stop.is_set():
                    log.warning("cmbagent store: lost the LISTEN connection (%s); reconnecting",
                                self._redact(exc))
            self._stop.wait(delay)
            delay = min(2.0, delay * 2)


def _storable(run_id: str) -> None:
    """PostgreSQL text cannot hold NUL: no stored run has such an id."""
    if "\x00" in run_id:
        raise UnknownRun(run_id)


def _json(doc: dict) -> str:
    return orjson.dumps(doc).decode()


__all__ = ["PostgresStore", "SCHEMA_VERSION", "MIGRATIONS"]
