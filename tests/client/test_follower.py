"""The protocol core of the client, without sockets: cursor, dedup, gaps, resets, backoff."""

import random

import pytest

from cmbagent_jupyter.client import (Backoff, Marker, RunFollower, Stats, http_base_url,
                                     state_from_snapshot, ws_url)
from engine.snapshot import RunState

from client_support import small_wf


@pytest.fixture
def log(store):
    """(run_id, events as wire dicts, snapshot at seq k) of a finished run."""
    run = small_wf().run(store=store, timeout=30)
    events = run.events().dicts()
    assert len(events) > 10

    def snap(k):
        return {"type": "snapshot", **RunState.replay(run.id, events[:k]).snapshot()}

    return run.id, events, snap


def batch(run_id, evs):
    return {"type": "events", "run_id": run_id, "events": evs}


def delivered(update):
    return [i["seq"] for i in update.items if isinstance(i, dict)]


def test_snapshot_then_consecutive_events(log):
    run_id, events, snap = log
    f = RunFollower(run_id)
    assert f.subscribe_frame() == {"type": "subscribe", "run_id": run_id}
    assert f.awaiting == "subscribe" and not f.synced
    # events before the first snapshot are ignored (the snapshot covers them)
    assert f.receive(batch(run_id, events[:2])).items == []
    update = f.receive(snap(3))
    assert update.items == [Marker("snapshot", run_id, 3, None, {k: v for k, v in snap(3).items() if k != "type"})]
    assert f.synced and f.last == 3
    update = f.receive(batch(run_id, events[3:]))
    assert delivered(update) == list(range(4, len(events) + 1)) and update.send == []
    assert f.state.snapshot() == RunState.replay(run_id, events).snapshot()
    assert f.stats.events_applied == len(events) - 3


def test_duplicates_dropped_and_counted(log):
    run_id, events, snap = log
    f = RunFollower(run_id)
    f.receive(snap(5))
    update = f.receive(batch(run_id, events[2:8]))  # seq 3..8: 3,4,5 are duplicates
    assert delivered(update) == [6, 7, 8]
    assert f.stats.duplicates_dropped == 3
    update = f.receive(batch(run_id, events[5:9]))  # 6,7,8 again, then 9
    assert delivered(update) == [9]
    assert f.stats.duplicates_dropped == 6 and f.last == 9
    assert f.state.snapshot() == RunState.replay(run_id, events[:9]).snapshot()


def test_gap_requests_state_once_and_ignores_until_snapshot(log):
    run_id, events, snap = log
    f = RunFollower(run_id)
    f.receive(snap(4))
    update = f.receive(batch(run_id, [events[4], events[6], events[7]]))  # 5, then 7 and 8: gap
    assert delivered(update) == [5]
    assert update.send == [{"type": "request_state", "run_id": run_id}]
    assert f.stats.gaps == 1 and f.awaiting == "gap" and f.last == 5
    # more events while waiting: ignored, no second request
    update = f.receive(batch(run_id, events[8:10]))
    assert update.items == [] and update.send == []
    update = f.receive(snap(9))
    assert [type(i) for i in update.items] == [Marker] and f.last == 9 and f.synced
    update = f.receive(batch(run_id, events[8:12]))  # 9 is a duplicate, 10.. apply
    assert delivered(update) == [10, 11, 12]
    assert f.state.snapshot() == RunState.replay(run_id, events[:12]).snapshot()


def test_reset_then_snapshot_replaces_state(log):
    run_id, events, snap = log
    f = RunFollower(run_id)
    f.receive(snap(3))
    f.receive(batch(run_id, events[3:6]))
    update = f.receive({"type": "reset", "run_id": run_id, "reason": "trimmed"})
    assert update.items == [Marker("reset", run_id, 6, "trimmed")] and update.send == []
    assert f.stats.resets == 1 and f.awaiting == "reset"
    assert f.receive(batch(run_id, events[6:8])).items == []  # ignored until the snapshot
    f.receive(snap(10))
    assert f.last == 10 and f.state.seq == 10
    assert f.state.snapshot() == RunState.replay(run_id, events[:10]).snapshot()
    assert delivered(f.receive(batch(run_id, events[10:11]))) == [11]


def test_older_snapshot_replays_without_delivering_twice(log):
    run_id, events, snap = log
    f = RunFollower(run_id)
    f.receive(snap(2))
    assert delivered(f.receive(batch(run_id, events[2:8]))) == [3, 4, 5, 6, 7, 8]
    f.receive(snap(5))  # the state goes back to seq 5...
    assert f.last == 5
    update = f.receive(batch(run_id, events[5:10]))  # ...6..8 are applied again, not delivered again
    assert delivered(update) == [9, 10]
    assert f.state.snapshot() == RunState.replay(run_id, events[:10]).snapshot()


def test_snapshot_state_is_a_copy(log):
    run_id, events, snap = log
    s = snap(3)
    f = RunFollower(run_id)
    f.receive(s)
    f.receive(batch(run_id, events[3:]))
    assert s == snap(3)  # applying events did not mutate the snapshot we were given
    assert state_from_snapshot(s).snapshot() == RunState.replay(run_id, events[:3]).snapshot()


def test_resubscribe_cursor(log):
    run_id, events, snap = log
    f = RunFollower(run_id)
    assert "after_seq" not in f.subscribe_frame()  # nothing applied yet: a snapshot, again
    f.receive(snap(4))
    f.receive(batch(run_id, events[4:7]))
    assert f.subscribe_frame() == {"type": "subscribe", "run_id": run_id, "after_seq": 7}
    # a gap open when the connection dropped is closed by the resubscription
    f.receive(batch(run_id, events[8:9]))
    assert f.awaiting == "gap"
    assert f.subscribe_frame()["after_seq"] == 7 and f.awaiting is None
    assert delivered(f.receive(batch(run_id, events[7:9]))) == [8, 9]
    # a reset open when it dropped: the new connection answers the cursor itself
    f.receive({"type": "reset", "run_id": run_id, "reason": "slow_consumer"})
    assert f.subscribe_frame()["after_seq"] == 9


def test_explicit_cursor_without_state(log):
    run_id, events, snap = log
    f = RunFollower(run_id, after_seq=5)
    assert f.subscribe_frame() == {"type": "subscribe", "run_id": run_id, "after_seq": 5}
    assert delivered(f.receive(batch(run_id, events[3:8]))) == [6, 7, 8]
    assert f.state is None and f.last == 8 and f.stats.duplicates_dropped == 2
    f.receive(snap(8))
    assert f.synced
    with pytest.raises(ValueError):
        RunFollower(run_id, after_seq=-1)


def test_unappliable_event_requests_state(log):
    run_id, events, snap = log
    f = RunFollower(run_id)
    f.receive(snap(3))
    bad = {**events[3], "event_type": "step_progress", "data": {"node_id": "nope", "progress": 0.5}}
    update = f.receive(batch(run_id, [bad]))
    assert update.items == [] and update.send == [{"type": "request_state", "run_id": run_id}]
    assert f.state is None and f.last == 3
    f.receive(snap(4))
    assert f.synced and f.state.seq == 4


def test_shared_stats():
    stats = Stats()
    a, b = RunFollower("a", 0, stats), RunFollower("b", 0, stats)
    ev = {"seq": 1, "event_type": "x", "timestamp": "t", "data": {}}
    a.on_events([ev, ev])
    b.on_events([ev])
    assert stats.as_dict() == {"reconnects": 0, "frames": 0, "events_applied": 2,
                               "duplicates_dropped": 1, "gaps": 0, "resets": 0}


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_full_jitter_bounds_and_cap():
    b = Backoff(first=1.0, cap=30.0, rng=random.Random(1234))
    ref = random.Random(1234)
    delays = []
    for attempt in range(40):
        ceiling = min(30.0, 1.0 * 2 ** attempt)
        assert b.ceiling() == ceiling
        d = b.next_delay()
        assert d == ref.uniform(0.0, ceiling)  # exactly uniform(0, ceiling): full jitter
        assert 0.0 <= d <= ceiling
        delays.append(d)
    assert delays[0] <= 1.0  # first retry within a second
    assert max(delays) <= 30.0
    capped = delays[5:]  # 2**5 > 30: all drawn from [0, 30]
    assert min(capped) < 7.5 and max(capped) > 22.5  # spread over the whole range, not "equal jitter"
    b.reset()
    assert b.attempt == 0 and b.ceiling() == 1.0 and b.next_delay() <= 1.0


def test_backoff_many_attempts_no_overflow():
    b = Backoff(first=0.5, cap=30.0, rng=random.Random(0))
    b.attempt = 10_000
    assert 0.0 <= b.next_delay() <= 30.0
    with pytest.raises(ValueError):
        Backoff(first=0)


def test_urls():
    assert ws_url("http://127.0.0.1:8888/") == "ws://127.0.0.1:8888/cmbagent/api/ws"
    assert ws_url("http://127.0.0.1:8888/a%40b") == "ws://127.0.0.1:8888/a%40b/cmbagent/api/ws"
    assert ws_url("https://h/base/?token=x") == "wss://h/base/cmbagent/api/ws"
    assert ws_url("localhost:8888") == "ws://localhost:8888/cmbagent/api/ws"
    assert http_base_url("wss://h/x/") == "https://h/x/"
