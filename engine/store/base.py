"""The store interface, and the logic every backend shares.

A store holds, per run: a run document, node documents, edges, the event log, control
commands and executor leases. Backends implement the abstract methods; what commands
are legal, and what losing an executor means, is decided here once.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Optional

import orjson

from .. import states
from ..errors import CommandRejected, StoreError, UnknownNode, UnknownRun
from ..events import TYPED_ENVELOPES, new_event
from ..snapshot import RunState
from ..states import SETTLED_WORKFLOW_STATES
from .leases import LEASE_RENEW_S, LEASE_TTL_S, Lease, LeaseJudge, LeaseRow, holder_gone
from .redact import redact_url

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

    def merge(self, later: "Commit") -> None:
        self.events.extend(later.events)
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


def lost_run_events(view: RunState, reason: str, message: str) -> list[tuple[str, dict]]:
    """The transitions that record a run whose executor is gone.

    Active nodes fail, pending ones are skipped, the run fails. A run already failed
    only gets an ``error_occurred`` saying its executor (needed for a retry) is gone.
    """
    out: list[tuple[str, dict]] = []
    state = view.run["state"]
    if state == "failed":
        return [("error_occurred", {"code": reason, "message": message})]
    err = {"type": reason, "message": message}
    for node in sorted(view.nodes.values(), key=lambda n: n["position"]):
        st = node["status"]
        if st in ("running", "paused", "waiting_approval", "retrying"):
            new = "failed"
        elif st == "pending":
            new = "skipped"
        else:
            continue
        data = {"node_id": node["id"], "old_status": st, "new_status": new,
                "attempt": node["attempt"], "reason": reason}
        if new == "failed":
            data["error"] = err
        out.append((states.node_event_type(st, new), data))
    failed = [n["id"] for n in view.nodes.values() if n["status"] == "failed"]
    failed += [d["node_id"] for _, d in out if d["new_status"] == "failed"]
    out.append(("workflow_failed", {"old_state": state, "new_state": "failed", "reason": reason,
                                   "failed_nodes": failed}))
    return out


def executor_lost(run_doc: dict) -> bool:
    """Is the loss of this run's executor already on record?"""
    return run_doc["reason"] == "executor_lost" or (run_doc["last_error"] or {}).get("code") == "executor_lost"


def record(view: RunState, items: list[tuple[str, dict]]) -> tuple[list[dict], set[str]]:
    """Turn (event_type, data) pairs into envelopes and apply them to ``view``."""
    events, touched = [], set()
    for etype, data in items:
        ev = new_event(view.run["id"], view.seq + 1, etype, data)
        node = view.apply(ev)
        if node:
            touched.add(node)
        events.append(ev)
    return events, touched


def lost_message() -> str:
    return ("the process that ran this workflow is gone (executor_lost); "
            "step code lives in that process, so the run cannot continue")


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


def check_command(view_run: dict, node_status: Optional[str], action: str,
                  node_id: Optional[str]) -> Optional[str]:
    """Resolve the node a command is about; raise CommandRejected if it is not legal."""
    if action in ("approve", "reject"):
        pending = view_run["pending_approvals"]
        if node_id is not None:
            pending = [a for a in pending if a["node_id"] == node_id]
        if not pending:
            where = f" on node {node_id!r}" if node_id else ""
            raise CommandRejected(f"no approval is pending{where}", "no_pending_approval")
        if len(pending) > 1:
            raise CommandRejected(
                f"{len(pending)} approvals are pending ({', '.join(a['node_id'] for a in pending)}); "
                "name the node", "ambiguous_approval")
        node_id = pending[0]["node_id"]
    err = states.command_error(action, view_run["state"], node_status)
    if err:
        raise CommandRejected(err, "illegal_command")
    return node_id


class Store(ABC):
    """Durable state of runs. Thread-safe; one object per process and URL is enough."""

    url: str
    #: True when the store pushes change notifications (PostgreSQL's LISTEN/NOTIFY):
    #: tailers and executors then sleep until woken instead of polling.
    pushes_changes: bool = False

    def __init__(self, max_events_per_run: Optional[int] = None,
                 max_event_age_s: Optional[float] = None) -> None:
        if max_events_per_run is not None and max_events_per_run < 1:
            raise StoreError("max_events_per_run must be >= 1")
        self.max_events_per_run = max_events_per_run
        self.max_event_age_s = max_event_age_s
        self._last_trim = 0.0
        self._journal = None
        self._journal_lock = threading.Lock()
        self._judge = LeaseJudge()
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

    def run(self, run_id: str):
        """A ``Run`` handle for a run started anywhere (raises UnknownRun)."""
        from ..run import Run

        self.run_doc(run_id)
        return Run(self, run_id)

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
        """Runs with events committed after ``cursor``: ``(new_cursor, {run_id: last_seq})``."""

    # -- writing ----------------------------------------------------------------------------

    @abstractmethod
    def apply_commits(self, commits: list[Commit]) -> list[tuple[Commit, Exception]]:
        """Write commits in one transaction; return those refused (lease lost, seq clash)."""

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

    @property
    def journal(self):
        """This process's group committer for the store."""
        with self._journal_lock:
            if self._journal is None or not self._journal.alive():
                from ..journal import Journal

                self._journal = Journal(self)
            return self._journal

    # -- commands -----------------------------------------------------------------------------

    @abstractmethod
    def submit_command(self, run_id: str, action: str, node_id: Optional[str] = None,
                       payload: Optional[dict] = None, command_id: Optional[str] = None) -> dict:
        """Record a control command; return its ack ``{command_id, ok, state?, error?, code?}``.

        Illegal commands are refused (ok false) and change nothing; a repeated
        ``command_id`` returns the first ack and is applied once.
        """

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

    @abstractmethod
    def _reap_run(self, run_id: str, owner: Optional[str], expires: Optional[float]) -> bool:
        """Mark the run lost, in one transaction, if its lease is still the one judged dead."""

    def reap(self) -> list[str]:
        """One reaping pass: mark runs whose executor is gone as failed (executor_lost);
        return their ids. A lease that only looks expired takes passes over a few
        seconds to be confirmed dead (engine.store.leases), so call this periodically."""
        t0 = time.monotonic()  # waiting for a stalled pass is part of the round trip
        with self._judge.lock:  # passes one at a time: each judges against the last
            rows, db_now = self._leases()
            dead = self._judge.judge(rows, db_now, time.monotonic() - t0)
        return [run_id for run_id, owner, expires in dead if self._reap_run(run_id, owner, expires)]

    def close(self) -> None:
        from ..runtime import close_executors

        self.closed = True
        close_executors(self)
        if self._journal is not None:
            self._journal.close()


class Refused(Exception):
    """Rolls back a commit batch that must write nothing; carries who was refused."""

    def __init__(self, failures: list[tuple[Commit, Exception]]):
        super().__init__("commit refused")
        self.failures = failures


def new_command_id() -> str:
    return uuid.uuid4().hex


__all__ = [
    "Store", "Commit", "Lease", "EventList", "LEASE_RENEW_S", "LEASE_TTL_S",
    "holder_gone", "Refused", "LEASE_COLUMNS", "RELEASE_LEASE", "lost_run_events", "record", "check_command", "envelope_dict",
    "envelope_json", "plan_schema", "ordered_edges", "unstorable_command", "mirrored_facts", "pending_command",
    "command_state", "command_refusal", "lost_message",
]
