"""Group commit: one writer thread per store and process.

Executors hand the journal ``Commit``s in the order they happened; the writer takes
everything queued, merges it per run and writes it in one transaction. The store on
disk is therefore always a prefix of what was recorded, never a state without its
event or an event without its state, and many events share one fsync. What the store
refuses for one run's sake (a lost lease, or a commit it cannot write) is refused to that
run alone: the others in the batch are written all the same.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Optional

from .store.base import Commit

#: Items queued before ``submit`` blocks: bounds memory when writers outpace the disk.
QUEUE_LIMIT = 2_000
#: Items merged into one transaction at most.
BATCH_LIMIT = 2_000
#: How long a commit is retried through a store outage (a transient error) before
#: its runs are given up.
OUTAGE_RETRY_S = 30.0

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, store) -> None:
        self._store = store
        self._queue: "queue.Queue[Optional[Commit]]" = queue.Queue(QUEUE_LIMIT)
        self._thread = threading.Thread(target=self._loop, name="cmbagent-journal", daemon=True)
        self._closed = False
        #: Runs whose commits were refused (their executor lost its lease), with why.
        self.refused: dict[str, Exception] = {}
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def submit(self, commit, wait: bool = False) -> Future:
        """Queue a Commit (or an executor's outbox pull, which has ``drain()``); with
        ``wait``, block until it is durable (or refused)."""
        if wait and commit.future is None:
            commit.future = Future()
        self._queue.put(commit)
        if wait:
            commit.future.result()
        return commit.future

    def flush(self) -> None:
        """Block until everything queued so far is durable."""
        self.submit(Commit(run_id=""), wait=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH_LIMIT:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._write(batch)
                    return
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[Commit]) -> None:
        merged: dict[str, Commit] = {}
        futures: dict[str, list[Future]] = {}
        for item in batch:
            if item.future is not None:
                futures.setdefault(item.run_id, []).append(item.future)
            if not item.run_id:
                continue  # a flush marker
            # An executor's outbox is drained here, in queue order: what it holds was
            # recorded before anything queued after this item.
            c = item.drain() if hasattr(item, "drain") else item
            if c.run_id in merged:
                merged[c.run_id].merge(c)
            else:
                merged[c.run_id] = Commit(c.run_id, list(c.events), c.run_doc, dict(c.nodes),
                                          list(c.commands), c.lease_owner, c.release_lease,
                                          results=dict(c.results))
        refused = self._apply(list(merged.values()))
        self.refused.update(refused)
        for run_id, futs in futures.items():
            exc = refused.get(run_id)
            for f in futs:
                if exc is None:
                    f.set_result(None)
                else:
                    f.set_exception(exc)

    def _apply(self, pending: list[Commit]) -> dict[str, Exception]:
        """Write ``pending`` (one transaction); return the runs whose commits were refused,
        with why."""
        refused: dict[str, Exception] = {}
        outage_until: Optional[float] = None
        delay = 0.05
        while pending:
            try:
                failures = self._store.apply_commits(pending)
            except Exception as exc:
                # A dropped connection or a restarting database server: try again for a
                # while (the store recognizes a batch it already committed).
                if self._store.transient(exc):
                    outage_until = outage_until or time.monotonic() + OUTAGE_RETRY_S
                    if time.monotonic() < outage_until:
                        log.warning("cmbagent journal: the store failed (%s); retrying", exc)
                        time.sleep(delay)
                        delay = min(1.0, delay * 2)
                        continue
                elif len(pending) > 1:
                    # Not an outage: something in one run's commit that the store cannot
                    # write. Write each run's commit on its own, so that only that run is
                    # refused, never the runs it happened to share a batch with.
                    log.warning("cmbagent journal: a batch of %d runs failed (%r); writing "
                                "each run's commit alone", len(pending), exc)
                    for c in pending:
                        refused.update(self._apply([c]))
                    break
                for c in pending:
                    refused[c.run_id] = exc
                break
            if not failures:
                break
            for c, exc in failures:
                refused[c.run_id] = exc
            pending = [c for c in pending if c.run_id not in refused]
        return refused
