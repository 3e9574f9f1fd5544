"""The fault tests' judge: what the application received against the store's true log.

``check(items, log, ...)`` takes

- ``items``: what the application got from ``client.events(run_id, markers=True)``, in
  the order it got them: event envelopes (dicts) and ``Marker``s (anything with
  ``.kind`` and ``.seq``). A leading ``snapshot`` marker is the subscription's starting
  point (its seq is the base: the application should then get every event after it);
  any later snapshot marker is a resync, and the events it skipped count as lost,
  because the application never saw them one by one.
- ``log``: the store's log of the run, ``store.events(run_id).dicts()``.
- optionally the client's final state (``RunState.snapshot()``) and the store's
  ``store.snapshot(run_id)``, which must be equal.

and counts:

- lost: events in the log after the base that were never delivered;
- dup: deliveries of a seq already delivered;
- reordered: first deliveries of a seq lower than one delivered before it;
- mismatched: delivered envelopes that differ from the log's (id, type, data, time);
- unknown: delivered seqs that are not in the log (or at/below the base).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional


@dataclass
class Report:
    base: int = 0  #: seq of the subscription's first snapshot (0: from the start)
    expected: int = 0  #: events in the log after the base
    received: int = 0  #: events delivered (duplicates included)
    lost: int = 0
    dup: int = 0
    reordered: int = 0
    mismatched: int = 0
    unknown: int = 0
    resyncs: int = 0  #: snapshot/reset markers after the first item
    snapshot_equal: Optional[bool] = None  #: None: not compared
    details: list = field(default_factory=list)  #: the first few problems, for the message

    @property
    def clean(self) -> bool:
        return (self.lost == self.dup == self.reordered == self.mismatched == self.unknown
                == self.resyncs == 0 and self.snapshot_equal is not False)

    def counts(self) -> str:
        return f"lost={self.lost} dup={self.dup} reordered={self.reordered}"

    def as_dict(self) -> dict:
        return asdict(self)


def _is_marker(item: Any) -> bool:
    return not isinstance(item, dict) and hasattr(item, "kind") and hasattr(item, "seq")


def _note(report: Report, text: str) -> None:
    if len(report.details) < 10:
        report.details.append(text)


def snapshot_diff(mine: dict, truth: dict) -> list[str]:
    """Where two snapshots differ (top-level keys, run fields, nodes by id), briefly."""
    out = []
    for key in sorted(set(mine) | set(truth)):
        a, b = mine.get(key), truth.get(key)
        if a == b:
            continue
        if key == "run" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"run.{k}: client {a.get(k)!r} != store {b.get(k)!r}"
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif key == "nodes" and isinstance(a, list) and isinstance(b, list):
            na, nb = {n["id"]: n for n in a}, {n["id"]: n for n in b}
            for nid in sorted(set(na) | set(nb)):
                x, y = na.get(nid), nb.get(nid)
                if x is None or y is None:
                    out.append(f"node {nid}: only in {'store' if x is None else 'client'}")
                elif x != y:
                    out += [f"node {nid}.{k}: client {x.get(k)!r} != store {y.get(k)!r}"
                            for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
        else:
            out.append(f"{key}: client {str(a)[:200]} != store {str(b)[:200]}")
    return out


def check(items: Iterable[Any], log: list[dict], client_snapshot: Optional[dict] = None,
          store_snapshot: Optional[dict] = None, base: Optional[int] = None) -> Report:
    """Count lost / duplicated / out-of-order (and wrong) events; compare the snapshots.

    ``base``: the seq the application subscribed after, when there is no leading
    snapshot marker (``subscribe(run_id, after_seq=base)``); default 0.
    """
    items = list(items)
    truth = {ev["seq"]: ev for ev in log}
    report = Report()
    first = 0
    if items and _is_marker(items[0]) and items[0].kind == "snapshot":
        report.base = items[0].seq or 0
        first = 1
    elif base is not None:
        report.base = base
    delivered: set[int] = set()
    highest = report.base
    for item in items[first:]:
        if _is_marker(item):
            report.resyncs += 1
            _note(report, f"{item.kind} marker at seq {item.seq} ({getattr(item, 'reason', None)})")
            continue
        seq = item["seq"]
        report.received += 1
        if seq in delivered:
            report.dup += 1
            _note(report, f"seq {seq} delivered again")
            continue
        delivered.add(seq)
        if seq < highest:
            report.reordered += 1
            _note(report, f"seq {seq} delivered after seq {highest}")
        highest = max(highest, seq)
        if seq not in truth or seq <= report.base:
            report.unknown += 1
            _note(report, f"seq {seq} is not in the log after the base {report.base}")
        elif item != truth[seq]:
            report.mismatched += 1
            _note(report, f"seq {seq} differs from the log: {item!r} != {truth[seq]!r}")
    expected = [s for s in truth if s > report.base]
    report.expected = len(expected)
    missing = [s for s in expected if s not in delivered]
    report.lost = len(missing)
    if missing:
        _note(report, f"lost seqs (first 20): {sorted(missing)[:20]}")
    if client_snapshot is not None or store_snapshot is not None:
        report.snapshot_equal = client_snapshot == store_snapshot
        if not report.snapshot_equal:
            if client_snapshot is None or store_snapshot is None:
                _note(report, f"snapshot missing: client {client_snapshot is not None}, "
                              f"store {store_snapshot is not None}")
            else:
                for line in snapshot_diff(client_snapshot, store_snapshot)[:10]:
                    _note(report, line)
    return report


def assert_clean(report: Report, context: str = "") -> None:
    """Fail with every count and the first problems unless the delivery was perfect."""
    assert report.clean, (f"{context}: {report.counts()} mismatched={report.mismatched} "
                          f"unknown={report.unknown} resyncs={report.resyncs} "
                          f"snapshot_equal={report.snapshot_equal}\n  " + "\n  ".join(report.details))
