"""The checker itself: it must see every kind of delivery fault (a blind judge would make
the fault tests pass vacuously)."""

import pytest

from checker import assert_clean, check
from cmbagent_jupyter.client import Marker


def log_of(n: int) -> list[dict]:
    return [{"run_id": "r", "seq": s, "id": f"id{s}", "event_type": "step_progress",
             "timestamp": f"t{s}", "data": {"node_id": "a", "progress": s / n}} for s in range(1, n + 1)]


def snap(seq: int) -> Marker:
    return Marker("snapshot", "r", seq, None, {"seq": seq})


def test_perfect_delivery_after_a_snapshot():
    log = log_of(10)
    report = check([snap(3)] + log[3:], log, {"seq": 10}, {"seq": 10})
    assert report.clean and (report.base, report.expected, report.received) == (3, 7, 7)
    assert_clean(report)


def test_each_fault_is_counted():
    log = log_of(10)
    e = {ev["seq"]: ev for ev in log}
    got = [snap(0), e[1], e[2], e[4], e[3], e[4], e[6], e[7], e[7], e[9]]
    report = check(got, log)
    # 5, 8 and 10 never came; 4 and 7 came twice; 3 came after 4
    assert (report.lost, report.dup, report.reordered) == (3, 2, 1)
    assert not report.clean
    with pytest.raises(AssertionError, match="lost=3 dup=2 reordered=1"):
        assert_clean(report)


def test_wrong_content_unknown_seqs_resyncs_and_state_are_caught():
    log = log_of(5)
    altered = dict(log[1], data={"node_id": "a", "progress": 0.99})
    beyond = dict(log[4], seq=6)
    report = check([log[0], altered, log[2], log[3], log[4], beyond], log, base=0)
    assert (report.mismatched, report.unknown, report.lost) == (1, 1, 0)
    # a later snapshot marker is a resync: what it skipped was not delivered one by one
    report = check([snap(1), log[1], snap(4), log[4]], log)
    assert (report.resyncs, report.lost) == (1, 2)
    # below the base: an event the subscription should not have replayed
    assert check([snap(2), log[1], log[2], log[3], log[4]], log).unknown == 1
    report = check(log, log, {"seq": 5, "run": {"state": "completed"}},
                   {"seq": 5, "run": {"state": "failed"}})
    assert report.snapshot_equal is False and not report.clean
    assert any("run.state" in d for d in report.details)
