"""This process's share of running workflows: its executors, their leases, waking them,
and the journal that writes for them.

- **The registry**: every executor started in this process, by run id
  (``local_executor``). An executor stays registered after its run ends: its results
  stay readable here.
- **One journal per store** (``journal``): the group committer every executor of this
  process hands its commits to (engine.journal).
- **One watcher per store** (a thread, idle while this process holds no lease there).
  It renews every lease this process holds on the store in one statement every
  LEASE_RENEW_S, and tells an executor whose lease was taken meanwhile (LeaseLost).
  It wakes an executor when a command for its run arrives, from any process:
  PostgreSQL pushes commands (LISTEN/NOTIFY); on SQLite the watcher polls ``PRAGMA
  data_version`` on its own connection (it changes only when another connection
  commits) and then reads which runs have commands waiting (one indexed query). So
  an executor needs no thread of its own while its run waits for nothing but a
  command (a failed run, until a retry), and none polls the store.
- **Exit**: at interpreter exit, what this process leaves unfinished is recorded as
  lost at once, instead of waiting for another process to reap it. When a store is
  closed, this process's executors on it stop first (``close_executors``), then its
  journal.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any, Optional

from .journal import Journal
from .store.base import COMMANDS_CHANNEL, Store
from .store.leases import LEASE_RENEW_S, Lease

#: How often the watcher of a store that does not push changes (SQLite) checks for
#: commits by other connections, while this process holds leases there: often while
#: one of its runs is active, less often while they all only wait for a command
#: (failed runs: a retry starts within IDLE_POLL_S; each check costs a wake-up).
COMMAND_POLL_S = 0.02
IDLE_POLL_S = 0.25
#: How long the watcher waits after the store failed before it tries again.
RETRY_PAUSE_S = 1.0

log = logging.getLogger(__name__)

_executors: dict[str, Any] = {}
_watchers: dict[Store, "_Watcher"] = {}
_journals: dict[Store, Journal] = {}
_met: set[Store] = set()  # stores whose closing this module hears (Store.on_close)
_lock = threading.Lock()


def local_executor(run_id: str) -> Optional[Any]:
    """The executor of ``run_id`` if it ran (or runs) in this process."""
    return _executors.get(run_id)


def journal(store: Store) -> Journal:
    """This process's group committer for ``store``, started when first needed."""
    with _lock:
        j = _journals.get(store)
        if j is None or not j.alive():
            _meet(store)
            j = _journals[store] = Journal(store)
        return j


def register(ex: Any) -> None:
    """Add a new executor; its store's watcher renews its lease from now on."""
    with _lock:
        _executors[ex.run_id] = ex
        _meet(ex.store)
        watcher = _watchers.get(ex.store)
        if watcher is None:
            watcher = _watchers[ex.store] = _Watcher(ex.store)
    watcher.hold(ex)


def forget(ex: Any) -> None:
    """The executor holds no lease any more (it stopped): stop renewing it."""
    watcher = _watchers.get(ex.store)
    if watcher is not None:
        watcher.drop(ex)


def close_executors(store: Store) -> None:
    """Stop this process's executors on ``store`` (before it closes its connections).

    A run still active is recorded as lost: its steps cannot go on without the store.
    """
    for ex in [e for e in list(_executors.values()) if e.store is store]:
        ex.abandon("the store was closed while the run was active")
    with _lock:
        watcher = _watchers.pop(store, None)
    if watcher is not None:
        watcher.stop()


def _meet(store: Store) -> None:
    """(Under _lock.) Hear when ``store`` closes: what runs on it here stops first."""
    if store not in _met:
        _met.add(store)
        store.on_close(lambda: _closing(store))


def _closing(store: Store) -> None:
    """``store`` is closing: its executors stop (recording what they leave unfinished),
    then its journal writes what they handed it, then the store's connections go."""
    close_executors(store)
    with _lock:
        _met.discard(store)
        j = _journals.pop(store, None)
    if j is not None:
        j.close()


def _abandon_all() -> None:
    """At interpreter exit, record at once that this process's unfinished runs are lost.

    Registered with threading's exit hooks, which run *before* the thread pools join
    their workers (and in reverse order of registration): a step waiting at a
    checkpoint is then released with ``Cancelled`` instead of keeping the process alive.
    """
    ending = [ex for ex in list(_executors.values()) if ex.at_exit()]
    for ex in ending:  # let them end cleanly (what they do not finish, the reaper will)
        ex.end_at_exit(2.0)


def _after_fork_in_child() -> None:
    # The watcher threads stayed in the parent, and so did the leases they renew.
    global _lock
    _lock = threading.Lock()
    _watchers.clear()


class _Watcher:
    """Renews this process's leases on one store and wakes executors for their commands."""

    def __init__(self, store: Store):
        self.store = store
        self._held: dict[str, Any] = {}  # run id -> executor holding the run's lease
        self._lock = threading.Lock()
        self._event = threading.Event()  # an executor was added, the watcher stops, or a re-check
        self._recheck = False  # notifications may have been missed: look for waiting commands
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="cmbagent-watch", daemon=True)
        self._thread.start()

    def hold(self, ex: Any) -> None:
        with self._lock:
            self._held[ex.run_id] = ex
        self._event.set()

    def drop(self, ex: Any) -> None:
        with self._lock:
            if self._held.get(ex.run_id) is ex:
                del self._held[ex.run_id]

    def stop(self) -> None:
        self._stopped = True
        self._event.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    def _notified(self, kind: Optional[str], run_id: Optional[str]) -> None:
        """A store notification (on the store's listening thread): wake whom it concerns."""
        if kind is None:
            self._recheck = True
            self._event.set()
        elif kind == COMMANDS_CHANNEL:
            ex = self._held.get(run_id or "")
            if ex is not None:
                ex.wake()

    def _loop(self) -> None:
        store = self.store
        pushed = store.pushes_changes
        unsubscribe = store.subscribe(self._notified) if pushed else None
        version: Optional[int] = None
        renew_at = time.monotonic() + LEASE_RENEW_S
        try:
            while not self._stopped:
                with self._lock:
                    held = dict(self._held)
                if not held:  # nothing to renew nor to wake: sleep until an executor comes
                    self._event.wait()
                    self._event.clear()
                    version, renew_at = None, time.monotonic() + LEASE_RENEW_S
                    continue
                wait = renew_at - time.monotonic()
                if not pushed:
                    idle = all(ex.idle for ex in held.values())
                    wait = min(wait, IDLE_POLL_S if idle else COMMAND_POLL_S)
                if wait > 0 and self._event.wait(wait):
                    self._event.clear()
                if self._stopped:
                    break
                try:
                    if not pushed:
                        seen = store.data_version()
                        if seen != version:
                            version = seen
                            self._wake(held, store.waiting_runs())
                    elif self._recheck:
                        self._recheck = False
                        self._wake(held, store.waiting_runs())
                    if time.monotonic() >= renew_at:
                        renew_at = time.monotonic() + LEASE_RENEW_S
                        self._renew(held)
                except Exception as exc:
                    if self._stopped or store.closed:
                        break
                    # An outage (or a lock held too long): leases may lapse meanwhile, which
                    # the executors hear at their next commit (refused: LeaseLost).
                    log.warning("cmbagent watcher of %s: the store failed (%s); retrying",
                                store.url, store.redact(exc))
                    version = None
                    self._event.wait(RETRY_PAUSE_S)
        finally:
            if unsubscribe is not None:
                unsubscribe()

    @staticmethod
    def _wake(held: dict[str, Any], waiting: set[str]) -> None:
        for run_id in waiting & held.keys():
            held[run_id].wake()

    def _renew(self, held: dict[str, Any]) -> None:
        me = Lease.mine().owner
        mine = [ex for ex in held.values()
                if ex.lease.owner == me and ex.holds_lease and not ex.stopped.is_set()]
        if not mine:
            return
        renewed = self.store.renew_leases(me, [ex.run_id for ex in mine])
        for ex in mine:
            # Released meanwhile (the run ended) is not lost: only a lease still held is.
            if ex.run_id not in renewed and ex.holds_lease and not ex.stopped.is_set():
                ex.lease_lost()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# Threading's exit hooks run in reverse order of registration: the thread pools' own
# hook (which joins their workers) must be registered first, so that ours runs first.
import concurrent.futures.thread  # noqa: E402,F401

if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_abandon_all)
else:  # pragma: no cover - other Pythons
    atexit.register(_abandon_all)
