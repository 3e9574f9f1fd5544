"""Whatever a step passes to ``ctx``, the call either records an event the log and the
wire can hold, or raises a clear ValueError / TypeError in the step and records nothing:
the run's log replays to its stored snapshot, which validates against the published
wire schema."""

from __future__ import annotations

import math
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from cmbagent_jupyter.protocol import wire_schema
from engine import Workflow
from engine_support import check_log, of_type

SNAPSHOT = Draft202012Validator({**wire_schema(), "$ref": "#/$defs/SnapshotMsg"})

#: What a step may report, events per call: file() records one, the others one each.
CALLS = ("progress", "message", "thinking", "tool_call", "cost", "metric", "file")


def assert_valid_snapshot(run) -> dict:
    snap = run.snapshot()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in SNAPSHOT.iter_errors({"type": "snapshot", **snap})]
    assert not errors, errors
    return snap


def test_non_finite_and_out_of_range_numbers_are_refused_in_the_step(store):
    refused: list[str] = []
    wf = Workflow("numbers")

    @wf.step()
    def report(ctx):
        for call in (lambda: ctx.metric("chi2", math.nan),
                     lambda: ctx.metric("chi2", math.inf),
                     lambda: ctx.metric("chi2", -math.inf),
                     lambda: ctx.metric("chi2", 10 ** 400),  # no float holds it
                     lambda: ctx.metric("chi2", 1.0, step=2 ** 70),
                     lambda: ctx.cost("m", usd=math.nan),
                     lambda: ctx.cost("m", usd=math.inf),
                     lambda: ctx.cost("m", usd=-1.0),
                     lambda: ctx.cost("m", input_tokens=math.inf),
                     lambda: ctx.cost("m", output_tokens=10 ** 30),
                     lambda: ctx.progress(math.nan),
                     lambda: ctx.tool_call("t", {"n": 10 ** 30}),
                     lambda: ctx.tool_call("t", result=[object()])):
            try:
                call()
            except (ValueError, TypeError) as exc:
                refused.append(str(exc))
        ctx.metric("chi2", 1.5, step=3)
        ctx.cost("m", input_tokens=10, output_tokens=5, usd=0.25)
        ctx.tool_call("t", {"x": math.nan, 2: {3}}, result=(1, math.inf))  # as JSON holds them
        ctx.tool_call("fit", {"grid": np.arange(3)}, result=np.float64(0.5))
        return "reported"

    run = wf.run(store=store, timeout=30)
    assert run.state == "completed", run.snapshot()["nodes"][0]["error"]
    assert len(refused) == 13, refused
    assert "ctx.metric: value must be a finite number, not nan" in refused
    assert "ctx.cost: usd must be a finite number, not inf" in refused
    assert "ctx.metric: step must be between" in refused[4]
    assert "ctx.tool_call arguments: an integer is outside JSON's 64-bit range" in refused[11]
    assert "ctx.tool_call result: the value cannot be recorded as JSON" in refused[12]
    events = check_log(run)  # nothing refused was recorded; replay == stored snapshot
    assert [e["data"]["value"] for e in of_type(events, "metric_update")] == [1.5]
    assert [e["data"]["usd"] for e in of_type(events, "cost_update")] == [0.25]
    tool = of_type(events, "agent_tool_call")[0]["data"]
    assert (tool["arguments"], tool["result"]) == ({"x": None, "2": [3]}, [1, None])
    tool = of_type(events, "agent_tool_call")[1]["data"]
    assert (tool["arguments"], tool["result"]) == ({"grid": [0, 1, 2]}, 0.5)
    snap = assert_valid_snapshot(run)
    assert snap["nodes"][0]["metrics"] == {"chi2": 1.5}
    assert snap["run"]["cost_usd"] == 0.25


# -- any values at all ---------------------------------------------------------------------------

surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
texts = st.one_of(st.text(), surrogates, st.builds("".join, st.lists(st.one_of(st.text(), surrogates))))
floats = st.floats()  # NaN and infinities included
ints = st.one_of(st.integers(), st.integers(min_value=2 ** 53), st.integers(max_value=-(2 ** 63)),
                 st.just(10 ** 400))
odd = st.one_of(st.none(), st.booleans(), st.binary(max_size=8), st.complex_numbers(),
                st.frozensets(st.integers(), max_size=2), st.dates(), st.just(object()),
                st.decimals(allow_nan=True), st.builds(np.float64, st.floats()),
                st.builds(np.array, st.lists(st.floats(), max_size=3)))
anything = st.one_of(texts, floats, ints, odd)
json_like = st.recursive(st.one_of(st.none(), st.booleans(), floats, ints, texts, odd),
                         lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner),
                                                 st.dictionaries(st.one_of(texts, ints), inner,
                                                                 max_size=3)),
                         max_leaves=6)
maybe = lambda s: st.one_of(st.none(), s, anything)  # noqa: E731

calls = st.one_of(
    st.tuples(st.just("progress"), st.tuples(maybe(floats), maybe(texts))),
    st.tuples(st.just("message"), st.tuples(st.one_of(texts, anything), texts, texts)),
    st.tuples(st.just("thinking"), st.tuples(st.one_of(texts, anything), texts)),
    st.tuples(st.just("tool_call"), st.tuples(texts, st.one_of(st.none(), st.dictionaries(
        st.one_of(texts, ints), json_like, max_size=3), anything), json_like, texts)),
    st.tuples(st.just("cost"), st.tuples(texts, st.one_of(ints, floats, anything),
                                         st.one_of(ints, floats, anything),
                                         st.one_of(floats, ints, anything))),
    st.tuples(st.just("metric"), st.tuples(texts, st.one_of(floats, ints, anything),
                                           maybe(ints), maybe(texts))),
    st.tuples(st.just("file"), st.tuples(st.one_of(texts.filter(lambda t: "\x00" not in t),
                                                   st.binary(min_size=1, max_size=12)
                                                   .filter(lambda b: b"\x00" not in b)),
                                         maybe(texts))),
)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(sequence=st.lists(calls, min_size=1, max_size=12))
def test_any_ctx_calls_record_or_refuse_and_the_log_replays_to_a_valid_snapshot(
        store, tmp_path, sequence):
    outcome: list[tuple[str, str]] = []
    wf = Workflow("anything")

    @wf.step()
    def report(ctx):
        for name, args in sequence:
            if name == "file" and isinstance(args[0], bytes):
                args = (os.path.join(os.fsencode(tmp_path), args[0].replace(b"/", b"_")), args[1])
            try:
                getattr(ctx, name)(*args)
            except (ValueError, TypeError) as exc:
                assert str(exc), f"ctx.{name}{args!r} raised {type(exc).__name__} with no message"
                outcome.append((name, "refused"))
            else:
                outcome.append((name, "recorded"))
        return len(outcome)

    run = wf.run(store=store, timeout=10)
    node = run.snapshot()["nodes"][0]
    assert run.state == "completed", node["error"]  # nothing but ValueError / TypeError escaped
    events = check_log(run)  # typed, gap-free, and the replay equals the stored snapshot
    assert_valid_snapshot(run)
    # One event per call that returned, none for a refused one, in order.
    reported = [e["event_type"] for e in events if e["event_type"] not in (
        "dag_created", "workflow_started", "workflow_state_changed", "workflow_completed",
        "step_started", "step_completed")]
    expected = {"progress": ["step_progress"], "message": ["agent_message"],
                "thinking": ["agent_thinking"], "tool_call": ["agent_tool_call"],
                "cost": ["cost_update"], "metric": ["metric_update"],
                "file": ["file_created", "file_updated"]}
    assert len(reported) == sum(1 for _, o in outcome if o == "recorded")
    recorded = [n for n, o in outcome if o == "recorded"]
    assert all(t in expected[n] for t, n in zip(reported, recorded)), (reported, recorded)


def test_a_metric_keeps_its_last_value_and_min_max_count_step_unit(store):
    wf = Workflow("metric stats")

    @wf.step()
    def fit(ctx):
        for i, chi2 in enumerate([2288.3, 1931.9, 1964.3, 2359.5]):
            ctx.metric("chi2", chi2, step=i)
        ctx.metric("H0", 67.43, unit="km/s/Mpc")

    run = wf.run(store, timeout=10)
    [node] = assert_valid_snapshot(run)["nodes"]
    assert node["metrics"] == {"chi2": 2359.5, "H0": 67.43}
    assert node["metric_stats"] == {
        "chi2": {"min": 1931.9, "max": 2359.5, "count": 4, "step": 3, "unit": None},
        "H0": {"min": 67.43, "max": 67.43, "count": 1, "step": None, "unit": "km/s/Mpc"},
    }
    check_log(run)
