"""The REST API: runs, snapshots, paged events, commands; 404 / 400 / 410."""

import json

import engine
import pytest
from tornado.httpclient import HTTPClientError

from server_support import finished_run


async def get_json(jp_fetch, *parts, **kwargs):
    r = await jp_fetch("cmbagent", "api", *parts, **kwargs)
    assert r.headers["Content-Type"].startswith("application/json")
    return json.loads(r.body)


async def test_runs_snapshot_and_events(store, jp_fetch):
    older = finished_run(store, name="older")
    newer = finished_run(store, name="newer", progress=30)
    runs = (await get_json(jp_fetch, "runs"))["runs"]
    assert [r["id"] for r in runs] == [newer.id, older.id] and runs == store.runs()
    snap = await get_json(jp_fetch, "runs", newer.id)
    assert snap == {"type": "snapshot", **store.snapshot(newer.id)}
    first, last = store.bounds(newer.id)
    # paging through the log
    got, after = [], 0
    while True:
        page = await get_json(jp_fetch, "runs", newer.id, "events", params={"after_seq": after, "limit": 7})
        assert (page["run_id"], page["first_seq"], page["last_seq"]) == (newer.id, first, last)
        if not page["events"]:
            break
        assert len(page["events"]) <= 7
        got += page["events"]
        after = page["events"][-1]["seq"]
    assert got == newer.events().dicts()
    # no after_seq: from the start; a cursor at the end: nothing
    page = await get_json(jp_fetch, "runs", newer.id, "events")
    assert [e["seq"] for e in page["events"]] == list(range(1, last + 1))
    page = await get_json(jp_fetch, "runs", newer.id, "events", params={"after_seq": last})
    assert page["events"] == []


@pytest.mark.parametrize("parts", [("runs", "no-such-run"), ("runs", "no-such-run", "events")])
async def test_unknown_run_is_404(store, jp_fetch, parts):
    finished_run(store)
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("cmbagent", "api", *parts)
    assert e.value.code == 404
    assert "no-such-run" in json.loads(e.value.response.body)["message"]


async def test_command_on_unknown_run_is_404(jp_fetch):
    r = await jp_fetch("cmbagent", "api", "runs", "no-such-run", "commands", method="POST",
                       body=json.dumps({"command_id": "c", "action": "pause"}), raise_error=False)
    assert r.code == 404


@pytest.mark.parametrize("after_seq", ["abc", "-1", "1.5", "true", "0x10",
                                       pytest.param("9" * 5000, id="5000-digits")])
async def test_bad_after_seq_is_400(store, jp_fetch, after_seq):
    run = finished_run(store)
    r = await jp_fetch("cmbagent", "api", "runs", run.id, "events", params={"after_seq": after_seq},
                       raise_error=False)
    assert r.code == 400, (after_seq, r.code, r.body)
    assert "after_seq" in json.loads(r.body)["message"]


@pytest.mark.parametrize("limit", ["abc", "-5"])
async def test_bad_limit_is_400(store, jp_fetch, limit):
    run = finished_run(store)
    r = await jp_fetch("cmbagent", "api", "runs", run.id, "events", params={"limit": limit},
                       raise_error=False)
    assert r.code == 400


async def test_cursor_beyond_the_log_is_not_a_server_error(store, jp_fetch):
    run = finished_run(store)
    last = store.bounds(run.id)[1]
    for after in (last + 1, 2**63 - 1, 2**63, 10**30):
        r = await jp_fetch("cmbagent", "api", "runs", run.id, "events", params={"after_seq": after},
                           raise_error=False)
        assert r.code in (200, 400), (after, r.code, r.body)
        if r.code == 200:
            assert json.loads(r.body)["events"] == []


async def test_trimmed_cursor_is_410(store, db_url, jp_fetch):
    run = finished_run(store, progress=30)
    engine.open_store(db_url, max_events_per_run=5).trim()
    first, last = store.bounds(run.id)
    assert first == last - 4
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("cmbagent", "api", "runs", run.id, "events", params={"after_seq": first - 2})
    assert e.value.code == 410
    assert "snapshot" in json.loads(e.value.response.body)["message"]
    # the oldest cursor still stored works, and so does the snapshot
    page = await get_json(jp_fetch, "runs", run.id, "events", params={"after_seq": first - 1})
    assert [e["seq"] for e in page["events"]] == list(range(first, last + 1))
    assert (await get_json(jp_fetch, "runs", run.id))["seq"] == last


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"action": "pause"}',
                                  b'{"command_id": "c", "action": "explode"}',
                                  b'{"command_id": "c", "action": "pause", "extra": 1}'])
async def test_bad_command_body_is_400(store, jp_fetch, body):
    run = finished_run(store)
    r = await jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST", body=body,
                       raise_error=False, allow_nonstandard_methods=True)
    assert r.code == 400, (body, r.code, r.body)


async def test_schema_is_the_protocols(jp_fetch):
    from cmbagent_jupyter.protocol import wire_schema

    schema = await get_json(jp_fetch, "schema")
    assert schema == json.loads(json.dumps(wire_schema()))
    assert {"ServerMessage", "ClientMessage"} <= set(schema["$defs"])
