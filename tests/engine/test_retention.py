"""Retention: old events are trimmed, the snapshot stays whole."""

from __future__ import annotations

import engine
from engine import Workflow
from engine_support import shutdown_executors
from support import sqlite_only


def test_events_beyond_the_limit_are_trimmed_but_the_snapshot_is_complete(tmp_path):
    store = engine.open_store(str(tmp_path / "trimmed.sqlite"), max_events_per_run=50)
    try:
        wf = Workflow("chatty")

        @wf.step()
        def talk(ctx):
            ctx.cost(model="m", input_tokens=100, output_tokens=10, usd=0.5)  # soon trimmed
            ctx.metric("early", 1.0)
            for i in range(500):
                ctx.progress((i + 1) / 500, f"step {i + 1}")
            return "said it all"

        @wf.step(deps=["talk"])
        def summary(talk):
            return talk.upper()

        run = wf.run(store=store, timeout=30)
        assert run.state == "completed"

        first, last = store.bounds(run.id)
        assert first > 1, "nothing was trimmed"
        assert last - first + 1 <= 50
        events = run.events()
        assert [e.seq for e in events] == list(range(first, last + 1))
        assert events[-1].event_type == "workflow_completed"
        assert run.events(after_seq=0)[0].seq == first

        snap = run.snapshot()
        assert snap["seq"] == last
        nodes = {n["id"]: n for n in snap["nodes"]}
        assert nodes["talk"]["status"] == nodes["summary"]["status"] == "completed"
        assert nodes["talk"]["progress_message"] == "step 500"
        assert nodes["talk"]["metrics"] == {"early": 1.0}
        assert (snap["run"]["cost_usd"], snap["run"]["input_tokens"]) == (0.5, 100)
        assert (snap["run"]["state"], snap["run"]["done"], snap["run"]["total"]) == ("completed", 2, 2)
        assert snap["layout"]["generations"] == [["talk"], ["summary"]]
        assert store.run(run.id).snapshot() == snap
    finally:
        shutdown_executors(store)
        store.close()


@sqlite_only
def test_the_tailers_poll_reads_only_new_rows(store):
    """The hub asks for changes every few ms: it must not scan the whole log."""
    plan = store._conn().execute(
        "EXPLAIN QUERY PLAN SELECT run_id, MAX(seq), MAX(gid) FROM events NOT INDEXED "
        "WHERE gid>? GROUP BY run_id", (0,)).fetchall()
    assert any("INTEGER PRIMARY KEY (rowid>?)" in row[-1] for row in plan), plan
    import inspect
    from engine.store.sqlite import SQLiteStore
    assert "NOT INDEXED WHERE gid>?" in inspect.getsource(SQLiteStore.changes_since)
