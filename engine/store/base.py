"""The store interface, and the logic every backend shares.

A store holds, per run: a run document, node documents, edges, the event log, control
commands and executor leases. Backends implement the abstract methods and a few small
pieces (their SQL dialect, row locking, a transaction); the operations whose rules
matter — what a commit must continue, which commands are accepted, reaping and
recording a lost executor — are written once, here, against those pieces.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, ContextManager, Iterator, Optional

import orjson

from ..errors import (
    CommandRejected,
    EngineError,
    LeaseLost,
    LogConflict,
    RunBusy,
    StoreError,
    UnknownNode,
    UnknownRun,
)
from ..events import TYPED_ENVELOPES, now_iso
from ..results import ResultArchive, Stored
from ..snapshot import RunState
from ..states import FINAL_WORKFLOW_STATES, SETTLED_WORKFLOW_STATES, check_command
from .leases import (
    Lease,
    LeaseJudge,
    LeaseRow,
    executor_lost,
    holder_gone,
    lost_message,
    record_loss,
)
from .redact import redact_url

#: What ``Store.subscribe`` callbacks hear: events were committed, or a command was
#: submitted, for a run (PostgreSQL's NOTIFY channels carry the same names).
EVENTS_CHANNEL = "cmbagent_events"
COMMANDS_CHANNEL = "cmbagent_commands"

#: The columns of a run's lease, and the SET clause that lets it go.
LEASE_COLUMNS = "lease_owner, lease_host, lease_pid, lease_ns, lease_expires"
RELEASE_LEASE = "lease_owner=NULL, lease_host=NULL, lease_pid=NULL, lease_ns=NULL, lease_expires=NULL"


@dataclass
class Commit:
    """What one transaction writes for one run: events and the state they lead to.

    ``events`` continue the run's log exactly (first seq = stored last_seq + 1), and
    ``lease_owner`` must still hold the run's lease, or the whole commit is refused.
    """

    run_id: str
    events: list[dict] = field(default_factory=list)
    run_doc: Optional[dict] = None
    nodes: dict[str, dict] = field(default_factory=dict)
    #: (command_id, status, error, code, state) of commands this commit settles.
    commands: list[tuple[str, str, Optional[str], Optional[str], Optional[str]]] = field(
        default_factory=list)
    lease_owner: Optional[str] = None
    release_lease: bool = False
    future: Optional[Future] = None
    #: Results of the steps whose completions these events record (engine.results):
    #: written in the same transaction, so a completion is never on record without them.
    results: dict[str, Stored] = field(default_factory=dict)

    def merge(self, later: "Commit") -> None:
        self.events.extend(later.events)
        self.results.update(later.results)
        if later.run_doc is not None:
            self.run_doc = later.run_doc
        self.nodes.update(later.nodes)
        self.commands.extend(later.commands)
        self.release_lease = self.release_lease or later.release_lease


class EventList(Sequence):
    """Events of a run, in seq order, parsed into typed envelope models on access.

    Reading 100k events costs one query; each model is built when first touched.
    """

    def __init__(self, run_id: str, rows: list[tuple]):
        self._run_id = run_id
        self._rows = rows
        self._cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._rows)))]
        if i < 0:
            i += len(self._rows)
        ev = self._cache.get(i)
        if ev is None:
            ev = self._cache[i] = envelope_model(self._run_id, self._rows[i])
        return ev

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self._rows)):
            yield self[i]

    def dicts(self) -> list[dict]:
        """The events as plain wire dicts (no model construction)."""
        return [envelope_dict(self._run_id, r) for r in self._rows]

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return f"<EventList {self._run_id} n={len(self)}>"


def envelope_dict(run_id: str, row: tuple) -> dict:
    seq, eid, etype, ts, data = row
    return {"run_id": run_id, "seq": seq, "id": eid, "event_type": etype, "timestamp": ts,
            "data": orjson.loads(data)}


def envelope_json(run_id_json: bytes, row: tuple) -> bytes:
    """One envelope's JSON, built without parsing its stored data (the server's fast path)."""
    seq, eid, etype, ts, data = row
    if isinstance(data, str):
        data = data.encode()
    return b"".join((b'{"run_id":', run_id_json, b',"seq":', str(seq).encode(), b',"id":"',
                     eid.encode(), b'","event_type":"', etype.encode(), b'","timestamp":"',
                     ts.encode(), b'","data":', data, b"}"))


def envelope_model(run_id: str, row: tuple):
    d = envelope_dict(run_id, row)
    return TYPED_ENVELOPES[d["event_type"]].model_validate(d)


def refusals(commits: list[Commit], heads: dict[str, Optional[tuple]]) -> list[tuple[Commit, Exception]]:
    """The commits of a batch the store must refuse, with why, given each run's stored
    ``(last_seq, lease_owner)`` (None: no such run).

    A commit must come from the run's lease holder (when it names one) and continue the
    log exactly; commits of one run follow one another in the batch.
    """
    failures: list[tuple[Commit, Exception]] = []
    for cm in commits:
        head = heads[cm.run_id]
        if head is None:
            failures.append((cm, UnknownRun(cm.run_id)))
        elif cm.lease_owner is not None and head[1] != cm.lease_owner:
            failures.append((cm, LeaseLost(f"run {cm.run_id} is no longer held by this process")))
        elif cm.events and cm.events[0]["seq"] != head[0] + 1:
            failures.append((cm, LogConflict(
                f"run {cm.run_id}: log is at seq {head[0]}, commit starts at {cm.events[0]['seq']}")))
        elif cm.events:
            heads[cm.run_id] = (cm.events[-1]["seq"], head[1])
    return failures


def command_refusal(command_id: str, code: str, message: str) -> dict:
    """The ack of a command the store refused (it changed nothing)."""
    return {"command_id": command_id, "ok": False, "error": message, "code": code}


def mirrored_facts(run_id: str, events: list[dict]) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """What ``events`` add to the tables that mirror facts of the log, as rows:
    edges ``(run_id, source, target)``, approvals requested ``(approval_id, run_id,
    node_id, prompt, requested_at)`` and answered ``(status, comment, answered_at,
    approval_id)``. Answers may be written after requests: one never precedes its own."""
    edges, requested, answered = [], [], []
    for e in events:
        t, d = e["event_type"], e["data"]
        if t == "dag_created" or t == "dag_updated":
            added = d["edges"] if t == "dag_created" else d["added_edges"]
            edges += [(run_id, x["source"], x["target"]) for x in added]
        elif t == "approval_requested":
            requested.append((d["approval_id"], run_id, d["node_id"], d["prompt"], e["timestamp"]))
        elif t == "approval_received":
            answered.append(("approved" if d["approved"] else "rejected", d.get("comment"),
                             e["timestamp"], d["approval_id"]))
    return edges, requested, answered


def pending_command(row: tuple) -> dict:
    """A stored ``(command_id, action, node_id, payload)`` row, as the executor reads it."""
    return {"command_id": row[0], "action": row[1], "node_id": row[2], "payload": orjson.loads(row[3])}


def command_state(row: Optional[tuple]) -> Optional[dict]:
    """A stored ``(status, error, code, state)`` row, as ``command_status`` returns it."""
    return None if row is None else {"status": row[0], "error": row[1], "code": row[2], "state": row[3]}


def unstorable_command(command_id: str, run_id: str, node_id: Optional[str]) -> Optional[dict]:
    """The refusal of a command naming ids no store can hold (NUL characters), if it does.

    Such a run or node cannot exist, so those get the unknown-run / unknown-node answer.
    """
    if "\x00" in run_id:
        return command_refusal(command_id, "unknown_run", str(UnknownRun(run_id)))
    if node_id is not None and "\x00" in node_id:
        return command_refusal(command_id, "unknown_node", str(UnknownNode(run_id, node_id)))
    if "\x00" in command_id:
        return command_refusal(command_id, "invalid", "command_id must not contain NUL characters")
    return None


def ordered_edges(rows: list[tuple], nodes: dict) -> list[dict]:
    """Stored ``(source, target)`` rows in node-declaration order (the order the log added them)."""
    by_target: dict[str, set[str]] = {}
    for s, t in rows:
        by_target.setdefault(t, set()).add(s)
    out = []
    for n in sorted(nodes.values(), key=lambda n: n["position"]):
        for dep in n["deps"]:
            if dep in by_target.get(n["id"], ()):
                out.append({"source": dep, "target": n["id"]})
    return out


def plan_schema(found: Optional[int], current: int, migrations: dict[int, list[str]],
                create: str, where: str) -> list[str]:
    """The statements that bring a store at version ``found`` (None: empty) to ``current``.

    The caller runs them in one transaction with the version bump, so a store is never
    half-migrated. A store newer than this code is refused untouched.
    """
    if found is None:
        return [s for s in create.split(";") if s.strip()]
    if found > current:
        raise StoreError(
            f"{where} was written by a newer cmbagent-jupyter (schema {found}, this one reads "
            f"up to {current}); upgrade cmbagent-jupyter (pip install -U cmbagent-jupyter)")
    missing = [v for v in range(found, current) if v not in migrations]
    if missing:
        raise StoreError(f"{where} has schema {found}, which this cmbagent-jupyter cannot upgrade "
                         f"(no migration from version {missing[0]}); export what you need and "
                         "start a new store")
    return [s for v in range(found, current) for s in migrations[v]]


class Store(ABC):
    """Durable state of runs. Thread-safe; one object per process and URL is enough."""

    url: str
    #: True when the store pushes change notifications (PostgreSQL's LISTEN/NOTIFY):
    #: tailers and executors then sleep until woken instead of polling.
    pushes_changes: bool = False

    def __init__(self, max_events_per_run: Optional[int] = None,
                 max_event_age_s: Optional[float] = None, results: Optional[ResultArchive] = None) -> None:
        if max_events_per_run is not None and max_events_per_run < 1:
            raise StoreError("max_events_per_run must be >= 1")
        self.max_events_per_run = max_events_per_run
        self.max_event_age_s = max_event_age_s
        #: Where step results are kept (engine.results); ``keep`` False: not at all.
        self.results = results or ResultArchive(None)
        self._last_trim = 0.0
        self._judge = LeaseJudge()
        self._closing: list[Callable[[], None]] = []
        self.closed = False

    # -- runs ---------------------------------------------------------------------------

    @abstractmethod
    def create_run(self, view: RunState, first_event: dict, lease: Lease) -> None:
        """Insert a new run (in draft) with its DAG, its first event and a lease."""

    @abstractmethod
    def run_doc(self, run_id: str) -> dict:
        """The run document (state, totals, counts); UnknownRun if there is none."""

    @abstractmethod
    def load_view(self, run_id: str) -> RunState:
        """The run's full materialized state, read consistently."""

    @abstractmethod
    def runs(self) -> list[dict]:
        """Run documents of every run in the store, newest first."""

    def snapshot(self, run_id: str) -> dict:
        return self.load_view(run_id).snapshot()

    #: The class of the handles ``run()`` returns: engine.run.Run, which sets it when the
    #: engine is imported. A handle starts, waits on and steers runs, which is above what
    #: a store does: the store hands it out without importing it.
    handle: Callable[["Store", str], Any]

    def run(self, run_id: str):
        """A ``Run`` handle for a run started anywhere (raises UnknownRun)."""
        self.run_doc(run_id)
        return Store.handle(self, run_id)

    # -- the log --------------------------------------------------------------------------

    @abstractmethod
    def event_rows(self, run_id: str, after_seq: int = 0, limit: Optional[int] = None) -> list[tuple]:
        """Rows ``(seq, id, event_type, timestamp, data_json)`` with seq > after_seq."""

    @abstractmethod
    def bounds(self, run_id: str) -> tuple[int, int]:
        """``(first_seq, last_seq)`` still stored; first_seq > 1 once trimmed."""

    def events(self, run_id: str, after_seq: int = 0, limit: Optional[int] = None) -> EventList:
        self.run_doc(run_id)
        return EventList(run_id, self.event_rows(run_id, after_seq, limit))

    @abstractmethod
    def change_cursor(self) -> int:
        """A position in the store-wide commit order (for tailers)."""

    @abstractmethod
    def changes_since(self, cursor: int) -> tuple[int, dict[str, int]]:
        """Runs with events committed after ``cursor``: ``(new_cursor, {run_id: last_seq})``;
        a run deleted after ``cursor`` appears with last_seq 0 (``delete_run``)."""

    # -- writing ----------------------------------------------------------------------------

    def apply_commits(self, commits: list[Commit]) -> list[tuple[Commit, Exception]]:
        """Write commits in one transaction; return those refused (``refusals``: unknown
        run, lease lost, log conflict), in which case the batch wrote nothing."""
        try:
            with self._transaction() as c:
                # Row locks in one global order (run id): two writers never deadlock.
                heads = {run_id: c.execute(self._sql("SELECT last_seq, lease_owner FROM runs WHERE id=?"
                                                     + self._LOCK_ROW), (run_id,)).fetchone()
                         for run_id in sorted({cm.run_id for cm in commits})}
                commits = [cm for cm in commits if not self._committed(c, cm, heads[cm.run_id])]
                failures = refusals(commits, heads)
                if failures:
                    raise Refused(failures)
                for cm in commits:
                    self._apply(c, cm)
                    if cm.results:
                        self._write_results(c, cm)
                self._appended(c, sorted({cm.run_id for cm in commits if cm.events}))
        except Refused as refused:  # rolled back: the batch wrote nothing
            return refused.failures
        self._maybe_trim(commits)
        return []

    # -- results (engine.results) -----------------------------------------------------------

    #: How this backend writes a result row over an older one of the same node.
    _UPSERT_RESULT = ("INSERT OR REPLACE INTO results(run_id, node_id, fingerprint, codec, size, data,"
                      " location, created_at) VALUES(?,?,?,?,?,?,?,?)")

    def _write_results(self, c: Any, cm: Commit) -> None:
        ts = now_iso()
        rows = [(cm.run_id, node_id, r.fingerprint, r.codec, r.size, r.data, r.location, ts)
                for node_id, r in cm.results.items()]
        self._executemany(c, self._sql(self._UPSERT_RESULT), rows)

    def _executemany(self, c: Any, statement: str, rows: list[tuple]) -> None:
        """One statement for many rows, in transaction ``c``."""
        c.executemany(statement, rows)

    @abstractmethod
    def _query(self, statement: str, args: tuple = ()) -> list[tuple]:
        """The rows of one read (``?`` placeholders), outside any write transaction."""

    def result_fingerprints(self, run_id: str) -> dict[str, str]:
        """``{node_id: code fingerprint}`` of the run's steps whose result is stored."""
        return dict(self._query("SELECT node_id, fingerprint FROM results WHERE run_id=?", (run_id,)))

    def load_result(self, run_id: str, node_id: str) -> Any:
        """The stored result of a completed step; EngineError saying why when there is none."""
        node = self.load_view(run_id).nodes.get(node_id)
        if node is None:
            raise UnknownNode(run_id, node_id)
        if node["status"] != "completed":
            raise EngineError(f"node {node_id!r} has no result: it is {node['status']}")
        rows = self._query("SELECT data, location FROM results WHERE run_id=? AND node_id=?", (run_id, node_id))
        if rows:
            return self.results.load(*rows[0])
        why = (node.get("result") or {}).get("error") or "results were not kept for this run"
        raise EngineError(f"the result of {node_id!r} was not stored ({why}); it lives only in the "
                          f"process that ran it. Its preview: {node['result_preview']}")

    # -- continuing a run in another process (engine.resume) ------------------------------

    def claim_run(self, run_id: str, lease: Lease, rerun: bool = False) -> RunState:
        """Take over a run whose executor is gone, for ``lease``; return its state.

        In one transaction: refused (RunBusy) while another live process holds it, naming
        that process (this process's own executor hands over first: engine.resume); a
        holder known gone is first recorded lost (executor_lost). Then the run
        must be failed or cancelled — or completed, when steps are to run again
        (``rerun``: stale or named) — else CommandRejected.
        """
        with self._transaction() as c:
            view = self._view(c, run_id, lock=True)
            owner, host, pid, ns = c.execute(self._sql(
                "SELECT lease_owner, lease_host, lease_pid, lease_ns FROM runs WHERE id=?"), (run_id,)).fetchone()
            if owner is not None and owner != lease.owner and not holder_gone(owner, host, pid, ns):
                raise RunBusy(
                    f"run {run_id} is held by a live process (pid {pid} on {host}): control it from "
                    "there (run.rerun / run.retry, or the Re-run button), or stop that kernel first")
            if owner is not None or view.run["state"] not in SETTLED_WORKFLOW_STATES:
                self._mark_lost(c, view)
                view = self._view(c, run_id)
            state = view.run["state"]
            if state == "completed" and not rerun:
                raise CommandRejected(
                    f"run {run_id} is completed and no step's code changed: there is nothing to "
                    "resume. To run steps again, pass rerun=[...] to wf.resume (or call "
                    "run.rerun(node) in the process that holds it)",
                    "illegal_command")
            self._take_lease(c, run_id, lease)
        return view

    @abstractmethod
    def _take_lease(self, c: Any, run_id: str, lease: Lease) -> None:
        """Give the run's lease to ``lease`` (in the caller's transaction), expiring
        LEASE_TTL_S from now on the database's clock."""

    # -- deleting ---------------------------------------------------------------------------

    #: The tables holding a run's rows, children first.
    _RUN_TABLES = ("results", "events", "commands", "approvals", "edges", "nodes", "runs")

    def delete_run(self, run_id: str) -> None:
        """Delete a run: its events, nodes, commands, approvals and results (rows and files).

        Refused (RunBusy) while the run executes: while its executor, alive, holds its
        lease and the run is not settled. A settled run still held by a live kernel (which
        could re-run a step) is deleted: its executor's next commit is refused.
        """
        with self._transaction() as c:
            view = self._view(c, run_id, lock=True)
            lease = c.execute(self._sql("SELECT lease_owner, lease_host, lease_pid, lease_ns FROM runs WHERE id=?"),
                              (run_id,)).fetchone()
            if view.run["state"] not in SETTLED_WORKFLOW_STATES and not holder_gone(*lease):
                raise RunBusy(f"run {run_id} is {view.run['state']} (its executor, process {lease[2]} "
                              f"on {lease[1]}, is alive); cancel it first, then delete it")
            files = c.execute(self._sql("SELECT DISTINCT location FROM results WHERE run_id=? AND location IS NOT NULL"),
                              (run_id,)).fetchall()
            for table in self._RUN_TABLES:
                c.execute(self._sql(f"DELETE FROM {table} WHERE {'id' if table == 'runs' else 'run_id'}=?"),
                          (run_id,))
            self._tombstone(c, run_id)
        self.results.remove_run(run_id, [location for (location,) in files])

    @abstractmethod
    def _tombstone(self, c: Any, run_id: str) -> None:
        """Record, in the deleting transaction, that ``run_id`` is gone, where tailers see
        it (``changes_since`` returns it with last_seq 0): run lists hear of deletions."""

    # -- retention ------------------------------------------------------------------------

    @abstractmethod
    def trim(self) -> int:
        """Delete events beyond the retention limits; return how many. Snapshots are unaffected."""

    def _maybe_trim(self, commits: list[Commit]) -> None:
        # At most once a second, and whenever a run settles: a run that finished within
        # the second would otherwise keep its excess events until the next write.
        if not (self.max_events_per_run or self.max_event_age_s):
            return
        settled = any(cm.run_doc is not None and cm.run_doc["state"] in SETTLED_WORKFLOW_STATES
                      for cm in commits)
        if settled or time.time() - self._last_trim > 1.0:
            self._last_trim = time.time()
            self.trim()

    def _age_cutoff(self) -> str:
        """The timestamp before which events are older than ``max_event_age_s``."""
        return (datetime.now(timezone.utc) - timedelta(seconds=self.max_event_age_s)
                ).isoformat(timespec="microseconds")

    def transient(self, exc: Exception) -> bool:
        """Is ``exc`` an outage worth retrying a write through (a lost connection)?"""
        return False

    def redact(self, exc: BaseException) -> str:
        """The text of an error from this store, fit for logs: no password in it."""
        return redact_url(str(exc))

    # -- commands -----------------------------------------------------------------------------

    def submit_command(self, run_id: str, action: str, node_id: Optional[str] = None,
                       payload: Optional[dict] = None, command_id: Optional[str] = None) -> dict:
        """Record a control command; return its ack ``{command_id, ok, state?, error?, code?}``.

        Illegal commands are refused (ok false) and change nothing; a repeated
        ``command_id`` returns the first ack and is applied once. A command for a run
        whose executor is known to be gone is refused (executor_lost), and the loss
        recorded.
        """
        command_id = command_id or new_command_id()
        refused = unstorable_command(command_id, run_id, node_id)
        if refused:
            return refused
        with self._transaction() as c:
            # The run's row lock orders this command against the executor's commits
            # (and against a concurrent submit of the same command_id, below).
            try:
                view = self._view(c, run_id, lock=True)
            except UnknownRun as exc:
                return command_refusal(command_id, exc.code, str(exc))
            row = c.execute(self._sql("SELECT run_id, action, node_id, ack FROM commands WHERE command_id=?"),
                            (command_id,)).fetchone()
            if row is not None:
                if row[0] != run_id or row[1] != action or (node_id is not None and row[2] != node_id):
                    return command_refusal(command_id, "command_id_reused",
                                           f"command_id {command_id!r} was already used for another command")
                return orjson.loads(row[3])
            try:
                node_id = check_command(view.run, view.nodes, action, node_id, payload)
            except (UnknownNode, CommandRejected) as exc:
                return command_refusal(command_id, exc.code, str(exc))
            lease = c.execute(self._sql("SELECT lease_owner, lease_host, lease_pid, lease_ns FROM runs WHERE id=?"),
                              (run_id,)).fetchone()
            if holder_gone(*lease):
                return command_refusal(command_id, "executor_lost", self._mark_lost(c, view))
            ack = {"command_id": command_id, "ok": True, "state": view.run["state"]}
            c.execute(self._sql("INSERT INTO commands(command_id, run_id, action, node_id, payload, ack,"
                                " status, created_at) VALUES(?,?,?,?,?,?, 'pending', ?)"),
                      (command_id, run_id, action, node_id, orjson.dumps(payload or {}).decode(),
                       orjson.dumps(ack).decode(), now_iso()))
            self._command_added(c, run_id)
        return ack

    @abstractmethod
    def pending_commands(self, run_id: str) -> list[dict]:
        """Commands not yet applied by the run's executor, oldest first."""

    @abstractmethod
    def command_status(self, command_id: str) -> Optional[dict]:
        """``{status: pending|applied|rejected, error, code, state}`` of a stored command."""

    # -- notifications ---------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Optional[str], Optional[str]], None]) -> Callable[[], None]:
        """Call ``callback(kind, run_id)`` from a background thread when a commit appends
        events (kind ``"cmbagent_events"``) or a command (``"cmbagent_commands"``) for a
        run; ``(None, None)`` when notifications may have been missed (re-check all).
        Only a wake-up: what changed is read from the store. Returns an unsubscribe
        function. Stores without ``pushes_changes`` never call back (poll them).
        """
        return lambda: None

    # -- leases --------------------------------------------------------------------------------

    @abstractmethod
    def renew_leases(self, owner: str, run_ids: list[str]) -> set[str]:
        """Extend, in one statement, ``owner``'s leases on ``run_ids`` to LEASE_TTL_S past
        the database's clock; return the runs renewed (the others are no longer held)."""

    @abstractmethod
    def waiting_runs(self) -> set[str]:
        """Runs with commands their executor has not answered yet (one indexed read)."""

    def data_version(self) -> int:
        """A number that changes when another connection commits (read on the calling
        thread's own connection): what stores that do not push changes are watched by."""
        raise NotImplementedError

    @abstractmethod
    def _leases(self) -> tuple[list[LeaseRow], Optional[float]]:
        """Every held lease, and the database's clock (epoch seconds) when it was read."""

    def reap(self) -> list[str]:
        """One reaping pass: mark runs whose executor is gone as failed (executor_lost);
        return their ids. A lease that only looks expired takes passes over a few
        seconds to be confirmed dead (engine.store.leases), so call this periodically."""
        t0 = time.monotonic()  # waiting for a stalled pass is part of the round trip
        with self._judge.lock:  # passes one at a time: each judges against the last
            rows, db_now = self._leases()
            dead = self._judge.judge(rows, db_now, time.monotonic() - t0)
        return [run_id for run_id, owner, expires in dead if self._reap_run(run_id, owner, expires)]

    def _reap_run(self, run_id: str, owner: Optional[str], expires: Optional[float]) -> bool:
        """Mark the run lost, in one transaction, if its lease is still the one judged dead."""
        with self._transaction() as c:
            row = c.execute(self._sql("SELECT lease_owner, lease_expires FROM runs WHERE id=?" + self._LOCK_ROW),
                            (run_id,)).fetchone()
            if row is None or row[0] is None or (row[0], row[1]) != (owner, expires):
                return False  # renewed, released or taken over since it was judged
            self._mark_lost(c, self._view(c, run_id))
            return True

    def _mark_lost(self, c: Any, view: RunState) -> str:
        """Record, inside the caller's transaction (which holds the run's row), that the
        run's executor is gone; return the message recorded.

        Commands it never answered are refused, whatever state the run ended in (a
        process may exit between its run's final state and its last read of commands).
        """
        message = lost_message()
        run_id = view.run["id"]
        c.execute(self._sql("UPDATE commands SET status='rejected', code='executor_lost', error=?"
                            " WHERE run_id=? AND status='pending'"), (message, run_id))
        if view.run["state"] in FINAL_WORKFLOW_STATES or executor_lost(view.run):
            # Nothing (more) to record: the run is final, or its loss is already on record.
            c.execute(self._sql(f"UPDATE runs SET {RELEASE_LEASE} WHERE id=?"), (run_id,))
            return message
        events, touched = record_loss(view, message)
        self._apply(c, Commit(run_id, events, view.run, {n: view.nodes[n] for n in touched},
                              release_lease=True))
        self._appended(c, [run_id])
        return message

    # -- what each backend supplies to the algorithms above ----------------------------------

    #: Appended to a read that must lock the run's row until the transaction ends
    #: (PostgreSQL's FOR UPDATE). SQLite needs none: its write transactions hold the
    #: whole file from their first statement (BEGIN IMMEDIATE).
    _LOCK_ROW = ""

    @abstractmethod
    def _transaction(self) -> ContextManager[Any]:
        """One write transaction, committed when the block ends (rolled back on an error),
        as a context manager giving its connection: ``c.execute(sql, args)`` returns a
        cursor (``fetchone``, ``fetchall``)."""

    def _sql(self, statement: str) -> str:
        """``statement``, written with ``?`` placeholders, in this backend's dialect."""
        return statement

    @abstractmethod
    def _view(self, c: Any, run_id: str, lock: bool = False) -> RunState:
        """The run's state, read in transaction ``c`` (``lock``: and its row locked); UnknownRun."""

    @abstractmethod
    def _apply(self, c: Any, cm: Commit) -> None:
        """Write one commit (already checked) in transaction ``c``."""

    def _committed(self, c: Any, cm: Commit, head: Optional[tuple]) -> bool:
        """Whether ``cm`` is in the log already (a retried batch whose first try committed)."""
        return False

    def _appended(self, c: Any, run_ids: list[str]) -> None:
        """The last step of a transaction that appended events to ``run_ids``."""

    def _command_added(self, c: Any, run_id: str) -> None:
        """The last step of a transaction that added a command for ``run_id``."""

    def on_close(self, fn: Callable[[], None]) -> None:
        """Have ``fn()`` called when the store closes, before its connections go (the
        runtime stops this process's executors on it, and its journal)."""
        self._closing.append(fn)

    def close(self) -> None:
        """Close the store: first whoever asked (``on_close``), then, in the backends,
        its connections."""
        self.closed = True
        hooks, self._closing = self._closing, []
        for fn in hooks:
            fn()


class Refused(Exception):
    """Rolls back a commit batch that must write nothing; carries who was refused."""

    def __init__(self, failures: list[tuple[Commit, Exception]]):
        super().__init__("commit refused")
        self.failures = failures


def new_command_id() -> str:
    return uuid.uuid4().hex


__all__ = [
    "Store", "Commit", "Lease", "EventList", "Refused", "EVENTS_CHANNEL", "COMMANDS_CHANNEL",
    "LEASE_COLUMNS", "RELEASE_LEASE", "refusals", "envelope_dict", "envelope_json", "plan_schema",
    "ordered_edges", "unstorable_command", "mirrored_facts", "pending_command", "command_state",
    "command_refusal", "new_command_id",
]
