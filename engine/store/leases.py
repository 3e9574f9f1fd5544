"""Executor leases: who holds a run, when its holder is known to be gone, and what the
log records then.

A run's executor holds a lease on it in the store: its process's identity (a random
owner id, the host name, the PID and the PID namespace) and an expiry time, which
this process's watcher (engine.runtime) pushes LEASE_TTL_S past the database's own
clock every LEASE_RENEW_S. A lease is judged dead (and its run marked failed,
``executor_lost``):

- **at once** when its holder was a process of this host *and PID namespace* that no
  longer exists. A PID means nothing in another namespace (containers may share a
  host name), so there the lease's expiry is all that counts;
- **after confirmation** otherwise: a lease seen expired (by the database's clock) is
  only a suspect, and becomes dead when a later pass, at least CONFIRM_S later on that
  clock, finds it still unchanged. A database that stalls (stopped, swapping,
  saturated) holds up renewals, not executors: the renewal queued behind the stall
  lands as soon as the stall ends, which is before any confirmation can come, so a
  stall never kills a live run. A pass that was itself slow (its round trip was
  stalled) clears every suspicion, as it may have read what a queued renewal was
  about to change.

A run whose executor is gone is recorded as failed (``lost_run_events``): its steps
lived in that process, so it cannot go on. The store records it when it reaps a dead
lease or refuses a command for such a run; an executor that stops without finishing
(its process exits, its store closes) records the same itself.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Optional

from .. import states
from ..events import new_event
from ..snapshot import RunState

#: How often the watcher renews this process's leases, and how long a renewal lasts.
LEASE_RENEW_S = 2.0
LEASE_TTL_S = 10.0
#: How long a suspect (expired) lease must stay unchanged before it is declared dead:
#: longer than a renewal period, so a renewal sent during a stall has landed by then.
CONFIRM_S = LEASE_RENEW_S + 1.0
#: A reaping pass whose own read took longer than this saw a stalled database.
SLOW_PASS_S = LEASE_RENEW_S

#: A stored lease as the reaper reads it: (run_id, owner, host, pid, pid namespace, expires).
LeaseRow = tuple[str, Optional[str], Optional[str], Optional[int], Optional[str], Optional[float]]


def _pid_namespace() -> Optional[str]:
    """This process's PID namespace (Linux: ``pid:[<inode>]``); None where there is none."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass
class Lease:
    owner: str
    host: str
    pid: int
    ns: Optional[str] = None

    @classmethod
    def mine(cls) -> "Lease":
        return _IDENTITY.lease()


class _Identity:
    """This process's executor identity; a new one after fork."""

    def __init__(self) -> None:
        self._pid = -1
        self._lease: Optional[Lease] = None

    def lease(self) -> Lease:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._lease = Lease(uuid.uuid4().hex, socket.gethostname(), self._pid, _pid_namespace())
        assert self._lease is not None
        return self._lease


_IDENTITY = _Identity()


def holder_gone(owner: Optional[str], host: Optional[str], pid: Optional[int],
                ns: Optional[str]) -> bool:
    """True when the lease's holder is known to be gone now, with no need to wait:
    nobody holds it, or it was a process of this host and PID namespace that has ended."""
    if owner is None:
        return True
    me = Lease.mine()
    if owner == me.owner or host != me.host or ns != me.ns or not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


class LeaseJudge:
    """Decides, pass after pass of a store's reaper, which leases are dead (module doc).

    One per store object; passes are serialized by the caller.
    """

    def __init__(self) -> None:
        #: run id -> ((owner, expires) seen expired, database time of the first such pass)
        self._suspects: dict[str, tuple[tuple, float]] = {}
        self.lock = threading.Lock()

    def judge(self, rows: list[LeaseRow], db_now: Optional[float],
              round_trip: float) -> list[tuple[str, Optional[str], Optional[float]]]:
        """``(run_id, owner, expires)`` of the leases dead as of this pass, read at
        ``db_now`` (the database's clock) in ``round_trip`` seconds."""
        slow = round_trip > SLOW_PASS_S
        me = Lease.mine().owner
        dead, suspects = [], {}
        for run_id, owner, host, pid, ns, expires in rows:
            if holder_gone(owner, host, pid, ns):
                dead.append((run_id, owner, expires))
                continue
            if slow or owner == me or db_now is None or (expires is not None and expires > db_now):
                continue
            seen = self._suspects.get(run_id)
            if seen is not None and seen[0] == (owner, expires):
                if db_now - seen[1] >= CONFIRM_S:
                    dead.append((run_id, owner, expires))
                    continue
                suspects[run_id] = seen
            else:
                suspects[run_id] = ((owner, expires), db_now)
        self._suspects = suspects
        return dead


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
        if st in states.UNFINISHED_NODE_STATES:
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


def record_loss(view: RunState, message: str) -> tuple[list[dict], set[str]]:
    """The events that record the loss of the run's executor, applied to ``view``, and the
    ids of the nodes they changed."""
    events, touched = [], set()
    for etype, data in lost_run_events(view, "executor_lost", message):
        ev = new_event(view.run["id"], view.seq + 1, etype, data)
        node = view.apply(ev)
        if node:
            touched.add(node)
        events.append(ev)
    return events, touched


def executor_lost(run_doc: dict) -> bool:
    """Is the loss of this run's executor already on record?"""
    return run_doc["reason"] == "executor_lost" or (run_doc["last_error"] or {}).get("code") == "executor_lost"


def lost_message() -> str:
    return ("the process that ran this workflow is gone (executor_lost); "
            "step code lives in that process, so the run cannot continue")


__all__ = ["Lease", "LeaseJudge", "LeaseRow", "holder_gone", "LEASE_RENEW_S", "LEASE_TTL_S",
           "CONFIRM_S", "SLOW_PASS_S", "lost_run_events", "record_loss", "executor_lost", "lost_message"]
