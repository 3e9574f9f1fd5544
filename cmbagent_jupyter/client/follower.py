"""The client rules of wire protocol v1 for one run, without I/O (as ``labextension/src/follower.ts``).

``RunFollower`` takes the server frames of one run (``snapshot``, ``events``, ``reset``)
and says, as an ``Update``, what to hand to the application and what to send back. It
keeps the protocol's client rules (``docs/architecture.md``): apply an event only if its
seq is last+1; drop seq <= last (a duplicate); on a gap send ``request_state`` and
ignore events until the snapshot; after ``reset`` wait for the snapshot; a snapshot
replaces the state and sets last = its seq. The state is an ``engine.snapshot.RunState``
(the engine's own reducer), so it is always exactly the state as of ``last``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional, Union

from engine.snapshot import RunState

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Counters of one client (all runs together)."""

    reconnects: int = 0  #: connections established (hello received) after the first
    frames: int = 0  #: server frames received
    events_applied: int = 0
    duplicates_dropped: int = 0  #: events with seq <= last applied
    gaps: int = 0  #: events with seq > last+1 (each gap answered by one request_state)
    resets: int = 0  #: ``reset`` frames

    def as_dict(self) -> dict:
        return asdict(self)


class Marker(NamedTuple):
    """A change of a run's state that is not one applied event."""

    kind: str  #: "snapshot" (the state was replaced) or "reset" (a snapshot follows)
    run_id: str
    seq: Optional[int]  #: the snapshot's seq; for a reset, the last seq applied before it
    reason: Optional[str] = None  #: a reset's reason (trimmed, ahead, malformed, slow_consumer)
    snapshot: Optional[dict] = None  #: the snapshot's content (run, nodes, edges, layout, seq)


class Update(NamedTuple):
    """What one server frame changed (``Update`` in follower.ts): what to deliver, what to send."""

    items: list  #: event dicts and Markers to deliver, in order
    send: list  #: frames (dicts) to send to the server


#: What the application is handed: an applied event (its envelope dict) or a ``Marker``.
Item = Union[dict, Marker]


def state_from_snapshot(snap: dict) -> RunState:
    """A ``RunState`` holding a snapshot's state (its documents are copied, not shared)."""
    nodes = {n["id"]: dict(n) for n in snap["nodes"]}
    return RunState(dict(snap["run"]), nodes, [dict(e) for e in snap["edges"]], snap["seq"])


class RunFollower:
    """The client side of one run subscription: cursor, dedup, gaps, resets and the state.

    ``last`` is the seq of the last event applied (None: nothing yet, a snapshot is
    expected). ``state`` is a ``RunState`` as of ``last`` once a snapshot arrived; a
    follower created with an explicit ``after_seq`` has no state until the server sends
    a snapshot (it still delivers the events, in order, exactly once).
    """

    def __init__(self, run_id: str, after_seq: Optional[int] = None, stats: Optional[Stats] = None):
        if after_seq is not None and (isinstance(after_seq, bool) or not isinstance(after_seq, int)
                                      or after_seq < 0):
            raise ValueError(f"after_seq must be an integer >= 0, not {after_seq!r}")
        self.run_id = run_id
        self.last: Optional[int] = after_seq
        self.state: Optional[RunState] = None
        #: Why events are ignored for now: "subscribe" (first snapshot), "gap", "reset" or None.
        self.awaiting: Optional[str] = "subscribe" if after_seq is None else None
        #: Highest seq ever delivered: an event is delivered at most once, even when a
        #: snapshot older than it makes the state go back and replay it.
        self.delivered = after_seq or 0
        self.stats = stats if stats is not None else Stats()
        self.error: Optional[str] = None

    @property
    def synced(self) -> bool:
        """True when the state is usable: a snapshot arrived and no gap or reset is open."""
        return self.state is not None and self.awaiting is None

    def subscribe_frame(self) -> dict:
        """The ``subscribe`` to send on every (re)connection: from the last applied seq.

        A new connection replays exactly the events after ``last``, so a gap or reset
        that was open on the old connection is closed by it.
        """
        frame = {"type": "subscribe", "run_id": self.run_id}
        if self.last is None:
            self.awaiting = "subscribe"
        else:
            frame["after_seq"] = self.last
            self.awaiting = None
        return frame

    def receive(self, frame: dict) -> Update:
        """Handle one server frame about this run (``snapshot``, ``events`` or ``reset``)."""
        ftype = frame.get("type")
        if ftype == "events":
            return self.on_events(frame["events"])
        if ftype == "snapshot":
            return self.on_snapshot(frame)
        if ftype == "reset":
            return self.on_reset(frame.get("reason", ""))
        return Update([], [])

    def on_events(self, events: list[dict]) -> Update:
        items: list = []
        send: list = []
        for ev in events:
            seq = ev["seq"]
            if self.awaiting is not None:
                continue  # a snapshot is on its way and will cover it
            if seq <= self.last:
                self.stats.duplicates_dropped += 1
                continue
            if seq != self.last + 1:
                self._gap(send)
                continue
            if self.state is not None:
                try:
                    self.state.apply(ev)
                except Exception:  # the state cannot take it: start over from a snapshot
                    log.warning("run %s: event %s could not be applied; requesting the state",
                                self.run_id, seq, exc_info=True)
                    self.state = None
                    self._gap(send)
                    continue
            self.last = seq
            self.stats.events_applied += 1
            if seq > self.delivered:
                self.delivered = seq
                items.append(ev)
        return Update(items, send)

    def _gap(self, send: list) -> None:
        self.stats.gaps += 1
        self.awaiting = "gap"
        send.append({"type": "request_state", "run_id": self.run_id})

    def on_snapshot(self, snap: dict) -> Update:
        content = {k: v for k, v in snap.items() if k != "type"}
        self.state = state_from_snapshot(content)
        self.last = content["seq"]
        self.awaiting = None
        self.delivered = max(self.delivered, self.last)
        return Update([Marker("snapshot", self.run_id, self.last, None, content)], [])

    def on_reset(self, reason: str) -> Update:
        self.stats.resets += 1
        self.awaiting = "reset"
        return Update([Marker("reset", self.run_id, self.last, reason)], [])

