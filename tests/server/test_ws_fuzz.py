"""Fuzz one socket with well over a thousand random and malformed frames.

Every frame must get exactly one answer (``reset`` + ``snapshot`` counting as one), the
socket must stay open throughout, every answer must validate against the server's
schema (the WS fixture checks), and the store must be left exactly as it was: the
commands go to finished runs (where every action is refused: the completed run's
executor lets it go, as when its process exits, so not even a re-run is accepted), unknown
runs and unknown nodes.

The test is synchronous on purpose: hypothesis drives the examples, and each one runs
the server's event loop (pytest-jupyter's) until its answer is in.
"""

import collections
import json

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cmbagent_jupyter.protocol import CLIENT_TYPES, ERROR_CODES
from engine.runtime import local_executor
from engine.states import COMMAND_ACTIONS
from server_support import cancelled_run, finished_run, store_contents

EXAMPLES = 1100
HUGE = [2**31, 2**53, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30), 10**300]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def frames(run_ids, node_ids):
    """A mix of junk and near-misses; a third of it well-formed enough to reach the
    session's handlers (subscribes with all kinds of cursors, commands on real runs)."""
    real_run = st.sampled_from(run_ids)
    any_run = st.one_of(real_run, real_run, st.text(max_size=30), json_values)
    action = st.one_of(st.sampled_from(COMMAND_ACTIONS), st.sampled_from(COMMAND_ACTIONS),
                       st.text(max_size=10), json_values)
    node_id = st.one_of(st.sampled_from(node_ids), st.text(max_size=15), json_values)
    cursor = st.one_of(st.integers(-3, 25), st.integers(-3, 25), st.sampled_from(HUGE), json_values)
    field = st.sampled_from(["run_id", "after_seq", "id", "command_id", "action", "node_id", "payload",
                             "type", "extra", ""])

    junk_json = st.builds(json.dumps, json_values)
    valid_type_wrong_fields = st.builds(
        lambda t, fields: json.dumps({"type": t, **fields}),
        st.sampled_from(sorted(CLIENT_TYPES)), st.dictionaries(field, json_values, max_size=3))
    subscribes = st.builds(
        lambda r, c, with_cursor: json.dumps({"type": "subscribe", "run_id": r,
                                              **({"after_seq": c} if with_cursor else {})}),
        any_run, cursor, st.booleans())

    def command(cid, r, a, n, p, extra):
        frame = {"type": "command", "command_id": cid, "run_id": r, "action": a}
        if n is not None:
            frame["node_id"] = n
        if p is not None:
            frame["payload"] = p
        return json.dumps({**frame, **extra})

    commands = st.builds(
        command, st.one_of(st.uuids().map(str), st.text(max_size=10), json_values), any_run, action,
        st.one_of(st.none(), node_id),
        st.one_of(st.none(), st.dictionaries(st.text(max_size=5), json_values)),
        st.one_of(st.just({}), st.just({}), st.dictionaries(field, json_values, max_size=1)))

    def other(t, r, i):
        if t == "ping":
            return json.dumps({"type": t, "id": i})
        if t in ("subscribe_runs", "unsubscribe_runs"):
            return json.dumps({"type": t})
        return json.dumps({"type": t, "run_id": r})

    others = st.builds(other, st.sampled_from(["unsubscribe", "request_state", "subscribe_runs",
                                               "unsubscribe_runs", "ping"]), any_run, json_values)
    nested = st.builds(lambda depth, open_, close: open_ * depth + close * depth,
                       st.sampled_from([2, 900, 1100, 5000, 100_000]), st.sampled_from(["[", '{"a":']),
                       st.sampled_from(["]", "}"]))
    raw_numbers = st.builds(lambda n: '{"type": "subscribe", "run_id": "%s", "after_seq": %s}' % n,
                            st.tuples(real_run, st.sampled_from(
                                ["1e400", "-0", "1E2", "9" * 5000, "NaN", "Infinity", "-Infinity", "01",
                                 "2.0", "1e-400", "18446744073709551616"])))
    # well-formed frames with random content: they reach the session's handlers and the store
    good_commands = st.builds(
        lambda cid, r, a, n: json.dumps({"type": "command", "command_id": cid, "run_id": r, "action": a,
                                         **({"node_id": n} if n is not None else {})}),
        st.uuids().map(str), st.sampled_from(run_ids), st.sampled_from(COMMAND_ACTIONS),
        st.one_of(st.none(), st.sampled_from(node_ids)))
    good_subscribes = st.builds(
        lambda r, c: json.dumps({"type": "subscribe", "run_id": r, "after_seq": c}),
        st.sampled_from(run_ids), st.integers(-2, 25))
    kinds = {  # strategy: weight
        "good command": (good_commands, 4), "good subscribe": (good_subscribes, 3),
        "binary": (st.binary(max_size=48), 1), "text": (st.text(max_size=48), 1),
        "junk json": (junk_json, 2), "wrong fields": (valid_type_wrong_fields, 2),
        "subscribe": (subscribes, 2), "command": (commands, 2), "other": (others, 2),
        "nested": (nested, 1), "raw number": (raw_numbers, 1),
    }
    names = [name for name, (_, weight) in kinds.items() for _ in range(weight)]
    return st.sampled_from(names).flatmap(lambda name: kinds[name][0])


def test_fuzz_one_socket(jp_asyncio_loop, store, ws_connect):
    loop = jp_asyncio_loop
    done = finished_run(store, name="done", progress=5)
    local_executor(done.id).end_at_exit(10)  # a completed run stays held for re-runs until then
    cancelled = cancelled_run(store)
    run_ids = [done.id, cancelled.id, "no-such-run", ""]
    node_ids = ["a", "b", "work", "no-such-node"]
    ws = loop.run_until_complete(ws_connect())
    assert loop.run_until_complete(ws.recv())["type"] == "hello"
    before = store_contents(store)
    stats = collections.Counter()

    # No shrinking: a frame that breaks the socket breaks it for every later example, so
    # the first failing frame is the one to report.
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(frame=frames(run_ids, node_ids))
    def one_frame(frame):
        replies = loop.run_until_complete(ws.request(frame, timeout=20))
        assert ws.conn.close_code is None, f"socket closed ({ws.conn.close_code}) after {frame!r:.300}"
        kinds = [r["type"] for r in replies]
        assert kinds in (["error"], ["ack"], ["pong"], ["snapshot"], ["events"], ["runs"], ["unsubscribed"],
                         ["reset", "snapshot"]), f"{frame!r:.300} got {kinds}"
        stats["sent"] += 1
        stats[kinds[0]] += 1
        reply = replies[0]
        if reply["type"] == "error":
            assert reply["code"] in ERROR_CODES and reply["code"] != "internal", (frame, reply)
        elif reply["type"] == "ack":
            assert reply["ok"] is False, f"a command was accepted: {frame!r:.300} -> {reply}"
        elif reply["type"] == "reset":
            assert replies[1]["run_id"] == reply["run_id"]

    one_frame()
    assert stats["sent"] >= 1000, stats
    # every kind of answer was exercised, the refusals of commands and the replays many times
    for kind, at_least in (("error", 300), ("ack", 20), ("events", 5), ("reset", 10), ("snapshot", 3),
                           ("runs", 1), ("unsubscribed", 1)):
        assert stats.get(kind, 0) >= at_least, (kind, stats)
    # the socket is still open and answering
    assert loop.run_until_complete(ws.request({"type": "subscribe_runs"}))[0]["type"] == "runs"
    assert store_contents(store) == before
